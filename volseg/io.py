"""Image I/O that keeps geometry, validates input and never leaves half-written files.

Every writer goes through :func:`atomic_path`: data is written to a temporary name in the
destination folder and renamed into place only once complete, so an interrupted run never
leaves a truncated ``.nii.gz`` or ``.json`` behind. Readers raise :class:`InputError` naming
the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from volseg.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    """True if the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``study_0001.nii.gz`` -> ``study_0001``."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only on success.

    The temporary name keeps the destination's suffixes (``.nii.gz`` stays ``.nii.gz``) so
    libraries that choose a format from the file name behave the same.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give normal file permissions
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return write_text_atomic(dest, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_nifti(path: str | os.PathLike, *, require_3d: bool = True):
    """Load a NIfTI file with nibabel, checking it exists, parses and is 3D.

    Returns the ``nibabel`` image (data not yet decoded). Raises :class:`InputError` with the
    file name for a missing, truncated, non-NIfTI or non-3D file.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad files
        raise InputError(f"{path}: not a readable NIfTI file ({_short(exc)})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if require_3d:
        if len(shape) == 4 and shape[3] == 1:
            pass  # a singleton 4th dimension is a 3D volume
        elif len(shape) != 3:
            raise InputError(f"{path}: expected a 3D image, got shape {tuple(shape)}")
    return img


def read_nifti(path: str | os.PathLike, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI volume fully: returns ``(array, affine)``.

    Decoding errors (e.g. a truncated gzip stream) are reported as :class:`InputError`.
    """
    img = load_nifti(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"{path}: could not decode image data ({_short(exc)})") from exc
    if data.ndim == 4:
        data = data[..., 0]
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, np.asarray(img.affine, dtype=np.float64)


def write_nifti(
    dest: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: Any = None,
    like: Any = None,
) -> Path:
    """Write a volume atomically with the given affine (qform and sform code 1).

    ``like`` may be a nibabel image whose header (units, codes, orientation) is copied so the
    output matches its source exactly.
    """
    import nibabel as nib

    if dtype is not None:
        array = np.asarray(array).astype(dtype, copy=False)
    header = like.header.copy() if like is not None else None
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(np.asarray(array).dtype)
    if header is not None:
        img.header.set_slope_inter(None, None)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(dest) as tmp:
        nib.save(img, str(tmp))
    return Path(dest)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
