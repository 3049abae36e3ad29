"""`volseg check-data DIR`: verify a MosMed-layout dataset before training."""

from __future__ import annotations

import argparse

HELP = "check a MosMed-layout dataset (layout, readable 3D NIfTI, HU range, mask pairs)"
DESCRIPTION = (
    "Read every study and mask of a MosMed-layout dataset once and report every problem, "
    "one line each with its file: layout, unreadable or non-3D NIfTI, NaN/inf, data not in "
    "Hounsfield units, masks without a study, masks whose shape or affine differ from their "
    "image, mask values other than 0/1. Exit code 0 when clean, 2 when problems were found."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="DIR", help="dataset root (holds studies/CT-k/)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes decoding the images (default: one per core, as memory allows; 0: one)",
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import sys
    from pathlib import Path

    from volseg.data.check import check_dataset
    from volseg.data.workers import study_peak_bytes, worker_count
    from volseg.errors import InputError
    from volseg.progress import progress

    if not Path(args.root).is_dir():
        what = "not a folder" if Path(args.root).exists() else "dataset folder not found"
        raise InputError(f"{args.root}: {what}")
    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers {args.workers}: must be 0 or more")
    problems = check_dataset(
        Path(args.root),
        progress=lambda files: progress(files, desc="check", unit="file"),
        workers=worker_count(args.workers, None, study_peak_bytes(0)),
    )
    for problem in problems:
        sys.stdout.write(f"{problem}\n")
    count = len(problems)
    logging.getLogger(__name__).info(
        "%s: %s", args.root, "clean" if count == 0 else f"{count} problem{'s' * (count != 1)}"
    )
    return 0 if count == 0 else 2
