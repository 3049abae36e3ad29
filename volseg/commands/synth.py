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
        "--voxels",
        metavar="X,Y,Z[;X,Y,Z...]",
        help="voxel size(s) in mm the scanner sites reconstruct at, in turn, over the "
        "preset's field of view (default: the preset's own), the first for the site of the "
        "labeled scans; at most one per site ("
        + ", ".join(f"{name} {preset.n_sites}" for name, preset in PRESETS.items())
        + "), e.g. "
        "'1.4,1.4,5;2.8,2.8,10' to train on scans that must be resampled as real ones are",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes to make the studies in (default: the cores that fit in memory; "
        "0: this one); the dataset is the same for any number",
    )
    parser.add_argument(
        "--paint",
        metavar="HEALTHY",
        help="instead: paint lesions (CT-1, CT-2, CT-3) into the healthy CT file or folder "
        "HEALTHY, writing a MosMed-layout set with exact truth (real anatomy to evaluate on)",
    )


def parse_voxels(text: str) -> tuple[tuple[float, ...], ...]:
    """``"X,Y,Z;X,Y,Z"`` as voxel sizes (mm); ValueError for a part that is not numbers.
    Their count and range are :class:`volseg.data.synth.SynthPreset`'s to check."""
    return tuple(tuple(float(v) for v in part.split(",")) for part in text.split(";"))


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from volseg.data.synth import get_preset, synthesize_dataset
    from volseg.errors import InputError

    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers {args.workers}: must be 0 or more")
    if args.paint is not None:
        from volseg.data.paint import paint_dataset

        if args.seed < 0:
            raise InputError(f"--seed must be >= 0, got {args.seed}")
        for flag, value in (("--voxels", args.voxels), ("--workers", args.workers)):
            if value is not None:
                raise InputError(f"{flag} applies to a synthetic dataset, not to --paint")
        paint_dataset(args.paint, args.out, seed=args.seed)
        return 0
    preset = get_preset(args.preset)
    if args.voxels is not None:
        try:
            preset = replace(preset, site_voxels=parse_voxels(args.voxels))
        except ValueError as exc:
            raise InputError(
                f"--voxels {args.voxels!r}: {exc} (expected X,Y,Z in mm, one per site, "
                f"separated by ';'; preset {preset.name!r} has {preset.n_sites} sites)"
            ) from None
    synthesize_dataset(
        args.out, preset=preset, seed=args.seed, overwrite=args.overwrite, workers=args.workers
    )
    return 0
