"""Input scans for inference: NIfTI files, folders of them, or DICOM series folders."""

from __future__ import annotations

import contextlib
import locale
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data.layout import study_id
from volseg.errors import InputError
from volseg.io import is_nifti, load_nifti

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class ScanSource:
    """Where one scan comes from: a NIfTI file or a DICOM series (folder + series UID)."""

    path: Path
    series_uid: str | None = None

    @property
    def id(self) -> str:
        return study_id(self.path) if self.series_uid is None else self.path.name


@dataclass
class Scan:
    """A decoded scan: HU array in its native voxel order, its RAS affine, its header."""

    source: ScanSource
    array: np.ndarray
    affine: np.ndarray
    nifti: Any = None  # the nibabel image when read from NIfTI (its header is copied out)

    @property
    def id(self) -> str:
        return self.source.id


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    """GDCM switches the process locale to "C" while reading DICOM; put it back after."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _dicom_series(folder: Path) -> list[str]:
    import SimpleITK as sitk

    with _locale_kept():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def discover_scans(path: str | Path, series_uid: str | None = None) -> list[ScanSource]:
    """List the scans under ``path``: a NIfTI file, a folder of NIfTI files, or a DICOM folder.

    A DICOM folder holding several series is refused with the list of series UIDs unless
    ``series_uid`` picks one.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_file():
        if not is_nifti(path):
            raise InputError(f"{path}: expected a .nii/.nii.gz file or a folder")
        return [ScanSource(path)]
    niftis = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
    if niftis:
        return [ScanSource(p) for p in niftis]
    series = _dicom_series(path)
    if not series:
        raise InputError(f"{path}: no NIfTI files and no DICOM series found")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{path}: series {series_uid} not found (has: {', '.join(series)})")
        return [ScanSource(path, series_uid)]
    if len(series) > 1:
        raise InputError(
            f"{path}: {len(series)} DICOM series found, choose one with --series: "
            + ", ".join(series)
        )
    return [ScanSource(path, series[0])]


def load_scan(source: ScanSource) -> Scan:
    """Decode a scan to float32 HU with its RAS affine (DICOM: LPS converted to RAS)."""
    if source.series_uid is None:
        img = load_nifti(source.path)
        try:
            data = np.asanyarray(img.dataobj, dtype=np.float32)
        except Exception as exc:
            raise InputError(f"{source.path}: could not decode image data ({exc})") from exc
        if data.ndim == 4:
            data = data[..., 0]
        return Scan(source, data, np.asarray(img.affine, dtype=np.float64), img)
    return _load_dicom(source)


def _load_dicom(source: ScanSource) -> Scan:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    try:
        with _locale_kept():
            files = reader.GetGDCMSeriesFileNames(str(source.path), source.series_uid)
            reader.SetFileNames(files)
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{source.path}: could not read DICOM series ({exc})") from exc
    if image.GetDimension() != 3 or min(image.GetSize()) < 1:
        raise InputError(f"{source.path}: DICOM series is not a 3D volume")
    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return Scan(source, array, affine)
