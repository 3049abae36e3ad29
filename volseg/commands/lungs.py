"""`volseg lungs`: classical lung masks for one CT or a folder of CTs."""

from __future__ import annotations

import argparse

HELP = "lung masks from CT (anatomy in physical units, no training), with volumes"
DESCRIPTION = (
    "Segment the lungs of a chest CT in Hounsfield units: a NIfTI file in -> a mask file out, "
    "or a folder in -> <id>_lungs.nii.gz per scan and lung_volumes.csv in the output folder. "
    "Masks are uint8 0/1 with exactly the input's shape and affine; inputs are never "
    "modified. Right and left lung volumes (mL) are logged, with a warning when implausible."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="CT NIfTI file or folder of them")
    parser.add_argument("-o", "--output", required=True, help="output file or folder")
    parser.add_argument(
        "--skip-existing", action="store_true", help="keep lung masks that already exist"
    )
    parser.add_argument(
        "--threshold-hu", type=float, default=None, help="air threshold in HU (default -400)"
    )
    parser.add_argument(
        "--closing-mm",
        type=float,
        default=None,
        help="rolling-ball closing radius in mm that pulls vessels and pleural lesions in "
        "(default 5)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from volseg.data.lung_files import segment_lungs_paths
    from volseg.data.lung_params import LungParams
    from volseg.errors import InputError
    from volseg.io import cleanup_on_error, is_nifti

    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and not dst.is_dir() and (src.is_dir() or not is_nifti(dst)):
        raise InputError(f"{dst}: exists and is not a folder (-o names the output folder)")
    given = {"threshold_hu": args.threshold_hu, "closing_mm": args.closing_mm}
    params = LungParams(**{k: v for k, v in given.items() if v is not None})
    with cleanup_on_error(dst.parent if is_nifti(dst) else dst):
        failed = segment_lungs_paths(src, dst, params=params, skip_existing=args.skip_existing)
    if failed:
        names = ", ".join(str(p) for p in failed[:3]) + (", ..." if len(failed) > 3 else "")
        raise InputError(f"no lung mask for {len(failed)} scan(s): {names} (reasons logged above)")
    return 0
