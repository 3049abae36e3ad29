"""Check a MosMed-layout dataset before training: every problem, one line each.

Training on a dataset with one broken file fails hours in, or worse, silently learns from a
mask that does not line up with its scan. :func:`check_dataset` reads every file once, one
at a time (memory stays at one volume), and reports all problems at the end:

- layout: ``studies/CT-k`` folders exist and hold studies;
- every file a readable 3D NIfTI with finite values and a usable grid (finite, non-singular
  affine; non-zero voxel sizes; see :func:`volseg.io.affine_problem`);
- images in Hounsfield units (air near -1000), not raw 0..4095 detector values, [0, 1] or
  blank (:func:`hu_problem`, shared with ``volseg predict``);
- masks (``masks/``, and ``lungs/`` / ``truth/`` when present): a matching study, the same
  shape and affine, values only 0 and 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data import layout
from volseg.data.workers import map_ordered
from volseg.errors import InputError
from volseg.io import decode_nifti, is_nifti, load_nifti

log = logging.getLogger(__name__)

# Mask folders and the suffix their file names carry before ``.nii.gz``.
MASK_FOLDERS: dict[str, str] = {
    layout.MASKS_DIR: "_mask",
    layout.LUNGS_DIR: "_lungs",
    layout.TRUTH_DIR: "_mask",
}
AFFINE_ATOL = 1e-3
"""Largest affine difference (mm) between a mask and its image still counted as equal."""
MIN_AIR_HU = -500.0
"""A CT in HU has air (outside the body, lungs) well below this."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or folder) of a dataset."""

    file: Path
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class _Geometry:
    shape: tuple[int, ...]
    affine: np.ndarray


def check_dataset(
    root: str | Path,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    workers: int = 0,
) -> list[Problem]:
    """All problems found in the dataset at ``root``; an empty list means it is clean.

    ``progress`` optionally wraps the iterable of files (e.g. :func:`volseg.progress.progress`).
    ``workers`` > 0 decodes the images in that many processes (:mod:`volseg.data.workers`);
    the problems come in the same order either way.
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(root, "dataset folder not found")]
    problems: list[Problem] = []
    studies_dir = root / layout.STUDIES_DIR
    if not studies_dir.is_dir():
        return [Problem(studies_dir, "missing: expected studies/CT-0 ... studies/CT-4")]

    image_files: list[Path] = []
    for entry in sorted(studies_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(Problem(entry, "unexpected file: studies belong in studies/CT-k/"))
        elif entry.name not in layout.CATEGORIES:
            problems.append(
                Problem(entry, f"unknown category folder (expected {', '.join(layout.CATEGORIES)})")
            )
        else:
            image_files.extend(_nifti_files(entry, problems))
    if not image_files:
        problems.append(Problem(studies_dir, "no studies found (no .nii.gz under studies/CT-k/)"))

    mask_files: list[tuple[Path, str]] = []
    for folder, suffix in MASK_FOLDERS.items():
        if (root / folder).is_dir():
            mask_files.extend((f, suffix) for f in _nifti_files(root / folder, problems))

    geometry: dict[str, _Geometry] = {}
    seen: dict[str, Path] = {}
    wrap = progress or (lambda files: files)
    unique: list[Path] = []
    for path in image_files:
        sid = layout.study_id(path)
        if sid in seen:
            problems.append(Problem(path, f"duplicate study id {sid} (also {seen[sid]})"))
            continue
        seen[sid] = path
        unique.append(path)
    reports = map_ordered(_image_report, unique, workers)
    for path, (geom, found) in zip(unique, wrap(reports), strict=True):
        problems.extend(found)
        if geom is not None:
            geometry[layout.study_id(path)] = geom

    suffix_of = dict(mask_files)
    for path in wrap([f for f, _ in mask_files]):
        _check_mask(path, suffix_of[path], seen, geometry, problems)
    return problems


def _nifti_files(folder: Path, problems: list[Problem]) -> Iterator[Path]:
    """NIfTI files directly in ``folder``; other visible files are reported."""
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            problems.append(Problem(path, "unexpected sub-folder"))
        elif not is_nifti(path):
            problems.append(Problem(path, "not a NIfTI file name (.nii or .nii.gz)"))
        else:
            yield path


def _read(path: Path, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray] | None:
    """Load and fully decode a 3D NIfTI; report and return None if that fails."""
    try:
        img = load_nifti(path)
        data = decode_nifti(img, path)
    except InputError as exc:  # unreadable header, or data that does not decode
        problems.append(Problem(path, _strip_path(str(exc), path)))
        return None
    if not np.issubdtype(data.dtype, np.number):
        problems.append(Problem(path, f"non-numeric data type {data.dtype}"))
        return None
    return data, np.asarray(img.affine, dtype=np.float64)


def hu_problem(data: np.ndarray) -> str | None:
    """Why ``data`` is not a CT in Hounsfield units, or None when it looks like one.

    The rule is physical: in HU, air is -1000 and water 0, and every chest CT holds air
    (around the body, in the lungs and airways), so its minimum lies near -1000 and always
    below :data:`MIN_AIR_HU` (-500), even after smoothing or partial volume. Refused: no
    voxels, NaN/inf voxels, one value everywhere (a blank volume), values rescaled to about
    [0, 1], no negative values (raw scanner values 0..4095 without the rescale intercept of
    about -1024) and a minimum above -500 HU (no air).
    """
    data = np.asarray(data)
    if data.size == 0:
        return "empty image"
    lo, hi = float(data.min()), float(data.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN spreads to both, inf is one
        return f"{int(np.count_nonzero(~np.isfinite(data)))} NaN/inf voxels"
    if lo == hi:
        return f"every voxel is {lo:g} (a blank volume), expected a CT in Hounsfield units"
    if lo >= -10:  # no air: rescaled to about [0, 1], or raw scanner values?
        sample = data.ravel()[:: max(1, data.size // 2_000_000)]
        p99 = float(np.percentile(sample, 99))
        if p99 < 10:
            return (
                f"values look rescaled (min {lo:.3g}, 99th percentile {p99:.3g}), "
                "expected Hounsfield units"
            )
    if lo >= 0:
        return (
            f"no negative values (min {lo:.4g}, max {hi:.4g}): unscaled scanner values? "
            "expected Hounsfield units with air near -1000"
        )
    if lo > MIN_AIR_HU:
        return f"no air: minimum {lo:.4g} HU (expected near -1000)"
    return None


def _image_report(path: Path) -> tuple[_Geometry | None, list[Problem]]:
    """One image decoded and checked: its geometry (None if unreadable) and its problems."""
    problems: list[Problem] = []
    loaded = _read(path, problems)
    if loaded is None:
        return None, problems
    data, affine = loaded
    geom = _Geometry(tuple(int(s) for s in data.shape), affine)
    problem = hu_problem(data)
    if problem is not None:
        problems.append(Problem(path, problem))
    return geom, problems


def _check_mask(
    path: Path,
    suffix: str,
    seen: dict[str, Path],
    geometry: dict[str, _Geometry],
    problems: list[Problem],
) -> None:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    if not name.endswith(suffix):
        problems.append(Problem(path, f"unexpected name: expected <study>{suffix}.nii.gz"))
        return
    sid = name[: -len(suffix)]
    if sid not in seen:
        problems.append(Problem(path, f"orphan mask: no study {sid} under studies/CT-k/"))
    loaded = _read(path, problems)
    if loaded is None:
        return
    data, affine = loaded
    geom = geometry.get(sid)
    if geom is not None:
        if tuple(data.shape) != geom.shape:
            problems.append(
                Problem(path, f"shape {tuple(data.shape)} differs from its image {geom.shape}")
            )
        elif not np.allclose(affine, geom.affine, rtol=0, atol=AFFINE_ATOL):
            diff = float(np.abs(affine - geom.affine).max())
            problems.append(Problem(path, f"affine differs from its image (by up to {diff:.3g})"))
    values = np.unique(data)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if values.size > 6 else "")
        problems.append(Problem(path, f"mask values must be 0 or 1, found {shown}"))


def _strip_path(message: str, path: Path) -> str:
    """``/a/b.nii.gz: not readable`` -> ``not readable`` (the Problem names the file)."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
