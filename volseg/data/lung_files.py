"""Lung masks for files and SimpleITK images: ``volseg lungs`` and ``prepare`` call these.

:func:`segment_lungs_file` masks one NIfTI CT into a file with its exact geometry,
:func:`segment_lungs_paths` a file or a folder (writing ``lung_volumes.csv``), and
:func:`segment_lungs` a SimpleITK image; :func:`sitk_from_array` / :func:`affine_from_sitk`
convert between nibabel-ordered arrays with RAS affines and SimpleITK's LPS images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from volseg.data.lung_params import LungParams
from volseg.data.lungs import LungMask, lung_mask
from volseg.errors import InputError

if TYPE_CHECKING:
    import SimpleITK as sitk

log = logging.getLogger(__name__)

# ITK works in LPS, NIfTI affines are RAS: flip the first two axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def segment_lungs(image: sitk.Image, params: LungParams | None = None) -> sitk.Image:
    """Lung mask (uint8 0/1) of a SimpleITK CT in HU, with exactly the geometry of ``image``."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
    data = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # (i, j, k)
    mask = lung_mask(np.asarray(data), affine_from_sitk(image), params).mask
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)))
    out.CopyInformation(image)
    return out


def sitk_from_array(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image from a nibabel-ordered array ``(i, j, k)`` and its RAS affine."""
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise InputError("affine has a zero-length voxel axis")
    u, _, vt = np.linalg.svd(linear / spacing)  # nearest rotation: drops any shear
    direction = _RAS_TO_LPS @ (u @ vt)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetOrigin(tuple(float(v) for v in _RAS_TO_LPS @ affine[:3, 3]))
    return image


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """RAS voxel-to-world affine of a SimpleITK image, for its array transposed to (i, j, k)
    (the inverse of :func:`sitk_from_array`)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return affine


def segment_lungs_file(
    src: str | os.PathLike, dst: str | os.PathLike, params: LungParams | None = None
) -> Path:
    """Segment the lungs of the NIfTI CT ``src``; write ``dst`` with its exact shape/affine.

    The output is written atomically (no half-written file) and never over the input.
    Raises :class:`InputError` for an unreadable file or a scan with no lung-like air.
    """
    _segment_file(Path(src), Path(dst), params)
    return Path(dst)


def _segment_file(src: Path, dst: Path, params: LungParams | None) -> LungMask:
    """:func:`segment_lungs_file`, returning the mask with its QC."""
    from volseg.io import load_nifti, read_nifti, write_nifti

    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"{dst}: output would overwrite the input image")
    data, affine = read_nifti(src)
    like = load_nifti(src)
    if not np.issubdtype(data.dtype, np.number) or not np.all(np.isfinite(data)):
        raise InputError(f"{src}: image has non-finite values")
    result = lung_mask(data, affine, params)
    if not result.mask.any():
        raise InputError(f"{src}: no lungs found (is this a chest CT in Hounsfield units?)")
    write_nifti(dst, result.mask, affine, dtype=np.uint8, like=like)
    log.info(
        "%s: right lung %.0f mL, left lung %.0f mL",
        src.name,
        result.right_ml,
        result.left_ml,
    )
    for warning in result.warnings:
        log.warning("%s: %s", src.name, warning)
    return result


def segment_lungs_paths(
    src: Path,
    dst: Path,
    *,
    params: LungParams | None = None,
    skip_existing: bool = False,
) -> list[Path]:
    """File -> file (or into folder ``dst``), or folder -> folder of ``<id>_lungs.nii.gz``
    plus ``lung_volumes.csv`` (right/left lung volume in mL, field-of-view cuts, warnings).

    A single bad file raises :class:`InputError`; in folder mode each bad file is logged and
    skipped, and the list of files that failed is returned.
    """
    from volseg.data.layout import is_scan_file, lungs_path, study_id
    from volseg.io import is_nifti, write_text_atomic
    from volseg.progress import progress

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InputError(f"{src}: not found")
    if src.is_file():
        target = dst if is_nifti(dst) else lungs_path(dst, study_id(src))
        if not (skip_existing and target.exists()):
            segment_lungs_file(src, target, params)
            log.info("wrote %s", target)
        return []
    files = sorted(f for f in src.rglob("*") if f.is_file() and is_scan_file(f))
    if not files:
        raise InputError(f"{src}: no .nii/.nii.gz files found")
    if is_nifti(dst):
        raise InputError(f"{dst}: input is a folder, so the output must be a folder")
    failed: list[Path] = []
    rows: list[str] = []
    for path in progress(files, desc="lungs", unit="scan"):
        target = lungs_path(dst, study_id(path))
        if skip_existing and target.exists():
            continue
        try:
            result = _segment_file(path, target, params)
        except InputError as exc:
            log.error("%s", exc)
            failed.append(path)
            continue
        rows.append(_volume_row(study_id(path), result))
    if rows:
        write_text_atomic(dst / "lung_volumes.csv", "".join([_VOLUME_HEADER, *rows]))
    log.info("%d lung masks in %s, %d failed", len(files) - len(failed), dst, len(failed))
    return failed


_VOLUME_HEADER = "id,right_lung_ml,left_lung_ml,lung_volume_ml,lungs_cut_by_fov,lung_warnings\n"


def _volume_row(sid: str, result: LungMask) -> str:
    """One ``lung_volumes.csv`` row (warnings joined by '; ', quoted)."""
    warnings = "; ".join(result.warnings).replace('"', "'")
    return (
        f"{sid},{result.right_ml:.1f},{result.left_ml:.1f},{result.total_ml:.1f},"
        f'{" ".join(result.cut_by_fov)},"{warnings}"\n'
    )
