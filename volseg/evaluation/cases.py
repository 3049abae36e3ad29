"""One evaluated case: masks read, put on the reference grid, and scored.

Folder listing and pairing (``<id>_mask.nii.gz`` by study id), the grid check, the optional
nearest-neighbour resampling onto the reference grid, and :func:`evaluate_case`, which turns
a prediction/reference (and lung) triple into one row of ``per_case.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data.layout import study_id
from volseg.errors import InputError
from volseg.io import is_nifti, read_nifti
from volseg.utils import same_grid as _same_grid

log = logging.getLogger(__name__)

AFFINE_ATOL_MM = 1e-3
"""Affines closer than this (mm, element-wise) are the same grid."""
SKIP_SUFFIXES = ("_prob", "_lungs", "_types", "_uncertainty")


def list_masks(folder: str | Path, role: str) -> dict[str, Path]:
    """Map study id -> mask file for every NIfTI in ``folder`` (not ``_prob``/``_lungs``/``_types``).

    Raises :class:`InputError` for a missing folder or two files with the same id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_nifti(path)):
            continue
        stem = path.name.split(".nii")[0]
        if stem.endswith(SKIP_SUFFIXES):
            continue
        sid = study_id(path)
        if sid in found:
            raise InputError(f"{role} files {found[sid]} and {path} have the same id '{sid}'")
        found[sid] = path
    return found


def list_images(folder: str | Path) -> dict[str, Path]:
    """Map study id -> CT for ``<id>.nii.gz`` files in ``folder``, or in its
    ``studies/CT-k/`` folders when it is a MosMed-layout dataset root."""
    from volseg.data.layout import STUDIES_DIR

    folder = Path(folder)
    studies = folder / STUDIES_DIR
    if not studies.is_dir():
        return list_masks(folder, "image")
    found: dict[str, Path] = {}
    for category in sorted(p for p in studies.glob("CT-*") if p.is_dir()):
        found |= list_masks(category, "image")
    return found


def pair_cases(
    preds: Mapping[str, Path], refs: Mapping[str, Path]
) -> tuple[list[str], list[Path], list[Path]]:
    """``(paired ids, predictions without a reference, references without a prediction)``."""
    paired = sorted(set(preds) & set(refs))
    pred_only = [preds[k] for k in sorted(set(preds) - set(refs))]
    ref_only = [refs[k] for k in sorted(set(refs) - set(preds))]
    return paired, pred_only, ref_only


def _read_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mask data (any dtype) and affine; refuses probability maps (floats strictly in (0, 1))."""
    data, affine = read_nifti(path)
    if np.issubdtype(data.dtype, np.floating) and np.any((data > 0) & (data < 1)):
        raise InputError(
            f"{path}: has values between 0 and 1; expected a binary mask, not probabilities"
        )
    return data, affine


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """True when two volumes share shape and affine (within :data:`AFFINE_ATOL_MM`)."""
    return _same_grid(shape_a, affine_a, shape_b, affine_b, AFFINE_ATOL_MM)


def resample_nearest(
    data: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    labels: bool = False,
) -> np.ndarray:
    """Nearest-neighbour resampling of a mask (boolean) or, with ``labels``, of a label map
    (uint8 values kept) onto another grid, from the two affines."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    values = np.asarray(data).astype(np.uint8) if labels else np.asarray(data) > 0
    img = nib.Nifti1Image(values.astype(np.uint8), affine)
    out = resample_from_to(img, (tuple(shape), target_affine), order=0, mode="constant", cval=0)
    return np.asarray(out.dataobj) if labels else np.asarray(out.dataobj) > 0


def _on_reference_grid(
    path: Path,
    ref_path: Path,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    resample: bool,
    labels: bool = False,
) -> tuple[np.ndarray, bool]:
    """Read a mask (or, with ``labels``, a label map) and return it on the reference grid:
    ``(mask, was_resampled)``."""
    data, affine = _read_mask(path)
    if same_grid(data.shape, affine, ref_shape, ref_affine):
        return (np.asarray(data).astype(np.uint8) if labels else data > 0), False
    if not resample:
        raise InputError(
            f"{path} (shape {data.shape}) and {ref_path} (shape {ref_shape}) are on different "
            "grids (shape or affine differ); use --resample to resample onto the reference"
        )
    return resample_nearest(data, affine, ref_shape, ref_affine, labels), True


def evaluate_case(
    sid: str,
    pred_path: Path,
    ref_path: Path,
    lungs_path: Path | None,
    resample: bool,
    nsd_tolerance_mm: float,
    types_paths: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """Load one case's files and return its CSV row (identifiers plus :func:`case_metrics`,
    and :func:`type_metrics` when ``types_paths`` gives predicted and reference type maps)."""
    from volseg.evaluation.metrics import case_metrics, type_metrics
    from volseg.quantify import spacing_from_affine

    ref_data, ref_affine = _read_mask(ref_path)
    ref = ref_data > 0
    pred, resampled = _on_reference_grid(pred_path, ref_path, ref.shape, ref_affine, resample)
    lungs = None
    if lungs_path is not None:
        lungs, _ = _on_reference_grid(lungs_path, ref_path, ref.shape, ref_affine, resample)
    metrics = case_metrics(pred, ref, spacing_from_affine(ref_affine), lungs, nsd_tolerance_mm)
    row: dict[str, Any] = {
        "case_id": sid,
        "pred_file": pred_path.name,
        "ref_file": ref_path.name,
        "lungs_file": lungs_path.name if lungs_path is not None else None,
        "resampled": int(resampled),
    }
    row.update(metrics)
    if types_paths is not None:
        pred_types, _ = _on_reference_grid(
            types_paths[0], ref_path, ref.shape, ref_affine, resample, labels=True
        )
        ref_types, _ = _on_reference_grid(
            types_paths[1], ref_path, ref.shape, ref_affine, False, labels=True
        )
        row.update(type_metrics(pred_types, ref_types, spacing_from_affine(ref_affine)))
    return row
