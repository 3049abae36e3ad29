"""File naming of the MosMed layout and of volseg's outputs, in one place.

Dataset (MosMed COVID19_1110, plus what ``volseg synth`` adds)::

    studies/CT-0..CT-4/study_XXXX.nii.gz   CT volumes (int16 HU)
    masks/study_XXXX_mask.nii.gz            lesion masks for the labeled subset
    lungs/study_XXXX_lungs.nii.gz           true lung masks (synthetic data only)
    truth/study_XXXX_mask.nii.gz            full lesion ground truth (synthetic data only)
    lesion_types/study_XXXX_types.nii.gz    lesion types: 1 ground glass, 2 consolidation
    manifest.csv                            per-study truth (synthetic data only)
"""

from __future__ import annotations

from pathlib import Path

from volseg.io import is_nifti, strip_nifti_suffix

CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
STUDIES_DIR = "studies"
MASKS_DIR = "masks"
LUNGS_DIR = "lungs"
TRUTH_DIR = "truth"
TYPES_DIR = "lesion_types"
MANIFEST = "manifest.csv"


def study_id(path: str | Path) -> str:
    """``.../study_0001.nii.gz`` or ``study_0001_mask.nii.gz`` -> ``study_0001``."""
    name = strip_nifti_suffix(Path(path).name)
    for suffix in ("_mask", "_lungs", "_pseudo", "_prob", "_types"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_scan_file(path: str | Path) -> bool:
    """A visible NIfTI file that is a scan, not a mask or map beside one (``*_mask``,
    ``*_lungs``, ...): the files ``volseg lungs`` and ``synth --paint`` take from a folder."""
    name = Path(path).name
    return (
        is_nifti(path) and not name.startswith(".") and study_id(path) == strip_nifti_suffix(name)
    )


def image_path(root: Path, category: str, sid: str) -> Path:
    return Path(root) / STUDIES_DIR / category / f"{sid}.nii.gz"


def mask_path(root: Path, sid: str) -> Path:
    return Path(root) / MASKS_DIR / f"{sid}_mask.nii.gz"


def lungs_path(folder: Path, sid: str) -> Path:
    return Path(folder) / f"{sid}_lungs.nii.gz"


def truth_path(root: Path, sid: str) -> Path:
    return Path(root) / TRUTH_DIR / f"{sid}_mask.nii.gz"


def truth_types_path(root: Path, sid: str) -> Path:
    return Path(root) / TYPES_DIR / f"{sid}_types.nii.gz"


def pseudo_path(folder: Path, sid: str) -> Path:
    return Path(folder) / f"{sid}_pseudo.nii.gz"


def pseudo_prob_path(folder: Path, sid: str) -> Path:
    return Path(folder) / f"{sid}_prob.nii.gz"


def prediction_path(folder: Path, sid: str) -> Path:
    return Path(folder) / f"{sid}_mask.nii.gz"
