"""`volseg lungs`: classical lung masks for one CT or a folder of CTs."""

from __future__ import annotations

import argparse

HELP = "lung masks from CT (threshold + morphology, no training)"
DESCRIPTION = (
    "Segment the lungs of a chest CT in Hounsfield units: a NIfTI file in -> a mask file out, "
    "or a folder in -> <id>_lungs.nii.gz per scan in the output folder. Masks are uint8 0/1 "
    "with exactly the input's shape and affine; inputs are never modified."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="CT NIfTI file or folder of them")
    parser.add_argument("-o", "--output", required=True, help="output file or folder")
    parser.add_argument(
        "--skip-existing", action="store_true", help="keep lung masks that already exist"
    )
    parser.add_argument(
        "--threshold-hu", type=float, default=-400.0, help="air threshold in HU (default -400)"
    )
    parser.add_argument(
        "--closing-mm",
        type=float,
        default=10.0,
        help="rolling-ball closing radius in mm that fills vessels and pleural lesions",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from volseg.data.lungs import LungParams, segment_lungs_paths

    params = LungParams(threshold_hu=args.threshold_hu, closing_mm=args.closing_mm)
    failed = segment_lungs_paths(
        Path(args.input), Path(args.output), params=params, skip_existing=args.skip_existing
    )
    return 0 if not failed else 2
