"""Input scans for inference: NIfTI files, folders of them, or DICOM series folders (a
``.zip`` of a series is unpacked first: :mod:`volseg.inference.archives`).

:func:`check_source` validates a scan from its headers alone (readable 3D NIfTI with a usable
grid; a DICOM series whose files all parse and whose slices are evenly spaced, none missing
or doubled), so a batch can be refused before anything is written. :func:`load_scan`
decodes a scan and refuses content that is not a CT in Hounsfield units
(:func:`volseg.data.check.hu_problem`: NaN voxels, a blank volume, raw 0..4095 values).
"""

from __future__ import annotations

import contextlib
import locale
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data.layout import is_scan_file, study_id
from volseg.errors import InputError, cause_text
from volseg.io import check_affine, decode_nifti, is_nifti, load_nifti

log = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SLICE_GAP_RTOL = 0.1
"""A gap between neighbouring slices differing from the series' spacing by more than this
share of it means a missing (or misplaced) slice."""


@dataclass
class ScanSource:
    """Where one scan comes from: a NIfTI file or a DICOM series (folder + series UID)."""

    path: Path
    series_uid: str | None = None
    name: str | None = None
    """The scan's id when not the file's or folder's name (a series from an archive)."""
    archive: Path | None = None
    """The ``.zip`` the series was unpacked from, into the temporary folder ``unpacked``."""
    unpacked: Path | None = None

    @property
    def id(self) -> str:
        if self.name is not None:
            return self.name
        return study_id(self.path) if self.series_uid is None else self.path.name

    @property
    def shown(self) -> Path:
        """The input as the user gave it: the archive for an unpacked series."""
        return self.archive if self.archive is not None else self.path

    def explain(self, exc: InputError) -> InputError:
        """``exc`` naming the archive (``series.zip:sub/003.dcm``) instead of the temporary
        folder a series was unpacked into; ``exc`` itself for other sources."""
        if self.archive is None or self.unpacked is None:
            return exc
        root = str(self.unpacked)
        text = str(exc).replace(root + "/", f"{self.archive}:").replace(root, str(self.archive))
        return InputError(text)


@dataclass
class Scan:
    """A decoded scan: HU array in its native voxel order, its RAS affine, its header."""

    source: ScanSource
    array: np.ndarray  # float32 HU, C order
    affine: np.ndarray
    nifti: Any = None  # the nibabel image when read from NIfTI (its header is copied out)

    @property
    def id(self) -> str:
        return self.source.id


@contextlib.contextmanager
def _gdcm() -> Iterator[None]:
    """Around GDCM/ITK calls: keep the process locale (GDCM switches it to "C") and keep ITK
    from printing warnings to stderr (volseg reports the problem itself, in one line)."""
    import SimpleITK as sitk

    saved = locale.setlocale(locale.LC_ALL)
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
        locale.setlocale(locale.LC_ALL, saved)


def dicom_series_ids(folder: Path) -> list[str]:
    """The UIDs of the DICOM series GDCM finds in ``folder`` (not its sub-folders)."""
    import SimpleITK as sitk

    with _gdcm():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def _series_files(folder: Path, series_uid: str) -> list[str]:
    import SimpleITK as sitk

    with _gdcm():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))


def series_files(source: ScanSource) -> list[str]:
    """The files of a DICOM source's series, in the order the series is read."""
    if source.series_uid is None:
        raise ValueError(f"{source.path} is not a DICOM series")
    return _series_files(source.path, source.series_uid)


def _has_dicom_preamble(path: Path) -> bool:
    """True for a file with the DICOM part-10 marker ("DICM" after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def discover_scans(path: str | Path, series_uid: str | None = None) -> list[ScanSource]:
    """List the scans under ``path``: a NIfTI file, a folder of NIfTI files (masks beside
    them, ``*_mask`` / ``*_lungs`` / ..., left out), or a DICOM folder.

    A DICOM folder holding several series is refused with the list of series UIDs unless
    ``series_uid`` picks one.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_file():
        if not is_nifti(path):
            raise InputError(
                f"{path}: expected a .nii/.nii.gz file, a folder or a .zip of a DICOM series"
            )
        return [ScanSource(path)]
    niftis = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
    scans = [p for p in niftis if is_scan_file(p)]
    if scans:
        if len(scans) < len(niftis):
            log.info(
                "%s: %d mask file(s) beside the scans left out (*_mask, *_lungs, ...; "
                "give lung masks with --lungs)",
                path,
                len(niftis) - len(scans),
            )
        return [ScanSource(p) for p in scans]
    if niftis:
        raise InputError(
            f"{path}: only mask files (*_mask, *_lungs, ...), no scan; give a scan file to "
            "predict on it anyway"
        )
    series = dicom_series_ids(path)
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


def check_source(source: ScanSource) -> None:
    """Refuse a scan whose headers are unusable (see the module docstring), naming the file."""
    if source.series_uid is None:
        load_nifti(source.path)
    else:
        _check_dicom_series(source)


def _check_dicom_series(source: ScanSource) -> None:
    """Every DICOM file of the folder parses, and the series' slices are evenly spaced."""
    folder, uid = source.path, str(source.series_uid)
    listed = {
        Path(f).resolve() for sid in dicom_series_ids(folder) for f in _series_files(folder, sid)
    }
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.resolve() not in listed and _has_dicom_preamble(path):
            raise InputError(f"{path}: unreadable DICOM file (truncated or damaged)")
    files = _series_files(folder, uid)
    if len(files) < 2:
        raise InputError(
            f"{folder}: DICOM series {uid} has {len(files)} slice(s); expected a 3D volume"
        )
    headers = [_slice_header(Path(f)) for f in files]
    first = headers[0]
    for path, header in zip(files, headers, strict=True):
        if header["size"] != first["size"]:
            raise InputError(
                f"{path}: slice size {header['size']} differs from {files[0]} ({first['size']})"
            )
    if all(h["position"] is not None and h["orientation"] is not None for h in headers):
        _check_slice_spacing(files, headers)


def _slice_header(path: Path) -> dict[str, object]:
    """Size, position (0020,0032) and orientation (0020,0037) of one DICOM file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _gdcm():
            reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: unreadable DICOM file (truncated or damaged)") from None

    def numbers(tag: str) -> np.ndarray | None:
        if not reader.HasMetaDataKey(tag):
            return None
        try:
            return np.array([float(v) for v in reader.GetMetaData(tag).split("\\")])
        except ValueError:
            return None

    return {
        "size": tuple(int(v) for v in reader.GetSize()[:2]),
        "position": numbers("0020|0032"),
        "orientation": numbers("0020|0037"),
    }


def _check_slice_spacing(files: list[str], headers: list[dict]) -> None:
    """Slices at distinct, evenly spaced positions along the slice normal."""
    iop = headers[0]["orientation"]
    if iop.size != 6 or not np.all(np.isfinite(iop)):
        raise InputError(f"{files[0]}: image orientation (0020,0037) is not 6 numbers")
    normal = np.cross(iop[:3], iop[3:])
    depth = np.array([float(np.dot(h["position"][:3], normal)) for h in headers])
    order = np.argsort(depth)
    gaps = np.diff(depth[order])
    step = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        a, b = Path(files[order[i]]).name, Path(files[order[i + 1]]).name
        if gap < 1e-3:
            raise InputError(f"{files[order[i + 1]]}: same slice position as {a}")
        if abs(gap - step) > SLICE_GAP_RTOL * step:
            raise InputError(
                f"{Path(files[0]).parent}: missing or misplaced slice between {a} and {b} "
                f"(they are {gap:.3g} mm apart, the other slices {step:.3g} mm)"
            )


def load_scan(source: ScanSource) -> Scan:
    """Decode a scan to float32 HU with its RAS affine (DICOM: LPS converted to RAS), in
    row-major (C) order: the lung mask, the predictor and the outputs work on the array in
    that order, and the copy is made here, in the decode step, off the device's thread.

    Raises :class:`InputError` naming the file when the content is not a CT in HU.
    """
    from volseg.data.check import hu_problem

    if source.series_uid is None:
        img = load_nifti(source.path)
        data = decode_nifti(img, source.path, np.float32, order="C")
        scan = Scan(source, data, np.asarray(img.affine, dtype=np.float64), img)
    else:
        scan = _load_dicom(source)
    problem = hu_problem(scan.array)
    if problem is not None:
        raise InputError(f"{source.path}: {problem}")
    return scan


def _load_dicom(source: ScanSource) -> Scan:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    try:
        with _gdcm():
            files = reader.GetGDCMSeriesFileNames(str(source.path), source.series_uid)
            reader.SetFileNames(files)
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{source.path}: could not read DICOM series ({cause_text(exc)})") from exc
    if image.GetDimension() != 3 or min(image.GetSize()) < 1:
        raise InputError(f"{source.path}: DICOM series is not a 3D volume")
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.float32)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    check_affine(source.path, affine)
    return Scan(source, array, affine)
