"""`volseg synth`: write a synthetic MosMed-like CT dataset (the embedded default data)."""

from __future__ import annotations

import argparse

HELP = "write a synthetic MosMed-like chest CT dataset (studies, masks, truth, manifest)"
DESCRIPTION = (
    "Generate synthetic chest CT studies in MosMedData's layout (studies/CT-0..CT-4, masks/ "
    "for a labeled CT-1 block) plus the full truth (lungs/, truth/, manifest.csv). "
    "Presets: tiny (tests), demo (CPU demo), study (the label-budget study: demo volumes, "
    "140 studies), mosmed (MosMed-sized volumes). "
    "Deterministic in --seed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from volseg.data.synth import PRESETS  # numpy only: keeps --help fast

    parser.add_argument("--preset", choices=list(PRESETS), default="demo", help="dataset size")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in --out"
    )
    parser.add_argument(
        "--paint",
        metavar="HEALTHY",
        help="instead: paint lesions (CT-1, CT-2, CT-3) into the healthy CT file or folder "
        "HEALTHY, writing a MosMed-layout set with exact truth (real anatomy to evaluate on)",
    )


def run(args: argparse.Namespace) -> int:
    from volseg.data.synth import synthesize_dataset

    if args.paint is not None:
        from volseg.data.paint import paint_dataset
        from volseg.errors import InputError

        if args.seed < 0:
            raise InputError(f"--seed must be >= 0, got {args.seed}")
        paint_dataset(args.paint, args.out, seed=args.seed)
        return 0
    synthesize_dataset(args.out, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    return 0
