"""Image I/O that keeps geometry, validates input and never leaves half-written files.

Every writer goes through :func:`atomic_path`: data is written to a temporary name in the
destination folder and renamed into place only once complete, so an interrupted run never
leaves a truncated ``.nii.gz`` or ``.json`` behind; an OS error while writing names the
destination. Readers raise :class:`InputError` naming the file and what is wrong with it,
geometry included (:func:`affine_problem`: finite, non-degenerate voxel axes; voxel sizes in
the header positive), so no reader downstream meets a singular or NaN affine.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from volseg.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MIN_VOXEL_MM = 1e-6
"""Voxel axes shorter than this (mm) are degenerate."""
SINGULAR_RTOL = 1e-6
"""An affine whose |det| is below this share of the product of its axis lengths is singular."""


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
    libraries that choose a format from the file name behave the same. An :class:`OSError`
    (permission denied, disk full) is re-raised naming ``dest``, not the temporary file.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise InputError(f"{dest}: is a folder, expected a file name")
    with naming_errors(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes)
    with naming_errors(dest, always=True):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give normal file permissions
    try:
        with naming_errors(dest, tmp_path):
            yield tmp_path
            os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_group() -> Iterator[Callable[[str | os.PathLike], Path]]:
    """Files that appear together or not at all: ``stage(dest)`` gives a temporary path for
    each; all are renamed into place when the block succeeds, none when it fails."""
    with contextlib.ExitStack() as stack:
        yield lambda dest: stack.enter_context(atomic_path(dest))


@contextlib.contextmanager
def naming_errors(
    dest: str | os.PathLike, tmp: str | os.PathLike | None = None, *, always: bool = False
) -> Iterator[None]:
    """Re-raise an OSError as one about ``dest`` when it names no file, names ``tmp`` (a
    temporary file or staging folder standing in for ``dest``) or a path under it, or
    ``always`` (e.g. around ``mkstemp``, whose error names a random temporary name)."""
    try:
        yield
    except OSError as exc:
        names = [str(n) for n in (exc.filename2, exc.filename) if n is not None]
        if always or not names:
            name = str(dest)
        else:
            name = _under(names[0], tmp, dest)
            if name == names[-1] and len(names) == 1:
                raise  # already about a real path
        raise OSError(exc.errno, exc.strerror or str(exc), name) from exc


def _under(name: str, tmp: str | os.PathLike | None, dest: str | os.PathLike) -> str:
    """``name`` with a leading ``tmp`` replaced by ``dest``."""
    if tmp is not None and (name == str(tmp) or name.startswith(f"{tmp}{os.sep}")):
        return str(dest) + name[len(str(tmp)) :]
    return name


@contextlib.contextmanager
def cleanup_on_error(
    *folders: str | os.PathLike,
    remove_files: bool = False,
    errors: tuple[type[BaseException], ...] = (Exception,),
) -> Iterator[None]:
    """On an exception of type ``errors`` in the block, remove what the block created.

    Folders under (and including) ``folders`` that did not exist before and are empty
    afterwards are removed, as are their new parent folders. With ``remove_files``, files
    that did not exist before are removed first (finished files that existed are never
    touched). Used so a failed command leaves no empty output folder or partial output.
    """
    roots = [Path(f) for f in folders]
    before = {root: _existing_entries(root) for root in roots}
    missing = {root: _missing_ancestors(root) for root in roots}
    try:
        yield
    except errors:
        for root in roots:
            _remove_new(root, before[root], remove_files)
            for folder in missing[root]:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def replace_entries(staging: Path, dest: Path, names: tuple[str, ...]) -> None:
    """Move ``names`` (files or folders) from ``staging`` into ``dest``, in order.

    An entry of the same name already in ``dest`` is first moved into ``staging/.old`` and
    deleted only after every new entry is in place; one that ``staging`` lacks is removed
    then too. Renames within one file system, so no half-replaced entry is ever visible.
    """
    import shutil

    old = staging / ".old"
    old.mkdir(exist_ok=True)
    for name in names:
        if (dest / name).exists() or (dest / name).is_symlink():
            os.replace(dest / name, old / name)
        if (staging / name).exists():
            os.replace(staging / name, dest / name)
    shutil.rmtree(old)


def _existing_entries(root: Path) -> set[Path]:
    """Every file and folder under ``root`` (``root`` included), empty if it does not exist."""
    if not root.exists():
        return set()
    found = {root}
    for dirpath, dirnames, filenames in os.walk(root):
        found.update(Path(dirpath) / name for name in dirnames + filenames)
    return found


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    out = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        out.append(folder)
    return out


def _remove_new(root: Path, before: set[Path], remove_files: bool) -> None:
    if not root.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        if remove_files:
            for name in filenames:
                if here / name not in before:
                    with contextlib.suppress(OSError):
                        (here / name).unlink()
        if here not in before:
            with contextlib.suppress(OSError):
                here.rmdir()  # only succeeds when empty


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


def affine_problem(affine: Any) -> str | None:
    """What is wrong with a voxel-to-world affine, or None when it is usable.

    Refused: a matrix that is not 4 x 4 or not finite, a voxel axis of (near) zero length,
    and a singular matrix (voxel axes not independent: no orientation can be read from it).
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        return f"affine has shape {a.shape}, expected 4 x 4"
    if not np.all(np.isfinite(a)):
        return "affine has NaN or infinite values"
    linear = a[:3, :3]
    lengths = np.linalg.norm(linear, axis=0)
    short = [i for i in range(3) if lengths[i] < MIN_VOXEL_MM]
    if short:
        return f"affine has a zero-length voxel axis (axis {short[0]})"
    if abs(np.linalg.det(linear)) < SINGULAR_RTOL * float(np.prod(lengths)):
        return "affine is singular (its voxel axes are not independent)"
    return None


def check_affine(path: str | os.PathLike, affine: Any) -> None:
    """Raise :class:`InputError` naming ``path`` when :func:`affine_problem` finds one."""
    problem = affine_problem(affine)
    if problem is not None:
        raise InputError(f"{path}: {problem}")


def _header_pixdim_problem(path: Path) -> str | None:
    """Zero or non-finite voxel sizes in the header as stored (nibabel silently sets them to 1)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as fh:
            head = fh.read(540)
    except Exception:  # unreadable: nib.load reports it
        return None
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        if len(head) < size:
            continue
        try:
            header = klass(head[:size], check=False)
        except Exception:
            continue
        if int(header["sizeof_hdr"]) != size:
            continue
        ndim = int(np.clip(header["dim"][0], 0, 7))
        zooms = np.asarray(header["pixdim"][1 : 1 + min(ndim, 3)], dtype=np.float64)
        if zooms.size and not np.all(np.isfinite(zooms) & (np.abs(zooms) > 0)):
            shown = ", ".join(f"{z:g}" for z in zooms)
            return f"voxel size in the header (pixdim) is {shown}; every size must be non-zero"
        return None
    return None


def load_nifti(path: str | os.PathLike, *, require_3d: bool = True):
    """Load a NIfTI file with nibabel, checking it exists, parses, is 3D and has a usable grid.

    Returns the ``nibabel`` image (data not yet decoded). Raises :class:`InputError` with the
    file name for a missing, truncated, non-NIfTI or non-3D file, an empty dimension, zero
    voxel sizes in the header, a data type that is not real numbers (RGB, complex) or an
    affine refused by :func:`affine_problem`.
    """
    import nibabel as nib
    from nibabel.imageglobals import LoggingOutputSuppressor

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    problem = _header_pixdim_problem(path) if is_nifti(path) else None
    if problem is not None:
        raise InputError(f"{path}: {problem}")
    try:
        with LoggingOutputSuppressor():  # header fixes nibabel would print as warnings
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
    if 0 in shape:
        raise InputError(f"{path}: empty image (shape {tuple(shape)})")
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":  # RGB, complex, ...: not one real value per voxel
        raise InputError(f"{path}: data type {dtype} is not a real number per voxel")
    try:
        affine = img.affine
    except Exception as exc:
        raise InputError(f"{path}: unreadable affine ({_short(exc)})") from exc
    check_affine(path, affine)
    return img


def read_nifti(path: str | os.PathLike, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI volume fully: returns ``(array, affine)``.

    Decoding errors (e.g. a truncated gzip stream) are reported as :class:`InputError`.
    """
    img = load_nifti(path)
    return decode_nifti(img, path, dtype), np.asarray(img.affine, dtype=np.float64)


def decode_nifti(
    img: Any, path: str | os.PathLike, dtype: Any = None, order: str = "K"
) -> np.ndarray:
    """The voxels of ``img`` (``path`` opened by :func:`load_nifti`): 3D (a singleton 4th
    dimension dropped), scaled by the header's slope and intercept, as ``dtype`` if given,
    in the file's (Fortran) voxel order or, with ``order="C"``, in row-major order (the cast
    and the reordering in one pass).

    The one decoder of NIfTI voxels. A ``.nii.gz`` is inflated with ISA-L (``isal``: 1.6x
    the standard library's zlib, which nibabel uses; bench/README.md) and handed to nibabel
    as bytes; the cast to ``dtype`` is numpy's, after nibabel's scaling (nibabel's own read
    to float32 takes longer than the inflate). Decoding errors (a truncated
    gzip stream, short data) are an :class:`InputError` naming the file.
    """
    from nibabel.imageglobals import LoggingOutputSuppressor

    try:
        if str(path).endswith(".gz"):
            from isal import igzip

            with LoggingOutputSuppressor():  # the header was checked by load_nifti
                img = type(img).from_bytes(igzip.decompress(Path(path).read_bytes()))
        data = np.asanyarray(img.dataobj)  # scaled by the header in float64, if at all
        if dtype is not None:
            data = data.astype(dtype, order=order, copy=False)  # one rounding to dtype
    except Exception as exc:  # zlib/isal and nibabel raise several types for bad data
        raise InputError(f"{path}: could not decode image data ({_short(exc)})") from exc
    data = data[..., 0] if data.ndim == 4 else data
    return np.ascontiguousarray(data) if order == "C" else data


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
