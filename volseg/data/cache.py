"""Preprocessing cache: decode and preprocess each ``.nii.gz`` once, then memory-map.

Layout::

    <cache_dir>/<settings_hash>/<id>.image.npy   float16, (X, Y, Z) on the RAS grid
    <cache_dir>/<settings_hash>/<id>.label.npy   uint8 lesion mask (labeled studies)
    <cache_dir>/<settings_hash>/<id>.lungs.npy   uint8 lung mask
    <cache_dir>/<settings_hash>/<id>.json        grid affine, shapes, source fingerprints

Each entry is made by applying the run's :class:`volseg.recipe.Recipe` — the very code the
predictor runs on a scan — so the cached grid is the grid inference works on.
``settings_hash`` (:meth:`Recipe.cache_key`) covers every preprocessing setting (orientation,
spacing, HU window, body crop, lung-density anchor, recipe version); each entry's JSON records
the recipe (and, with a lung-density anchor, the scan's shift ``lung_shift_hu``), the
body crop box and the size and mtime of its source files, so editing a source or changing
preprocessing invalidates exactly the entries concerned. The JSON is written last and
atomically: it marks a complete entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data import layout
from volseg.data.mosmed import Study
from volseg.data.workers import map_ordered, workers_for
from volseg.errors import InputError, cause_text
from volseg.io import atomic_path, write_json_atomic
from volseg.recipe import Recipe, Working
from volseg.utils import file_fingerprint, same_grid

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
IMAGE_DTYPE = np.float16


def settings_hash(recipe: Recipe) -> str:
    """Short stable hash of the preprocessing settings (names the cache sub-folder)."""
    text = json.dumps({"recipe": recipe.cache_key(), "cache_format": CACHE_FORMAT})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class CachedVolume:
    """A preprocessed study on disk; arrays are loaded memory-mapped on demand."""

    id: str
    folder: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    """Voxel → world (RAS, mm) affine of the preprocessed grid."""
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    has_label: bool
    has_lungs: bool
    box: tuple[tuple[int, int], ...] = ()
    """The body crop on the working grid (``[start, stop)`` per axis)."""

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def working(self, recipe: Recipe) -> Working:
        """The :class:`volseg.recipe.Working` that maps the source grid to this entry's."""
        return Working.of(recipe, self.source_affine, self.source_shape, self.box)

    def mask_from_source(self, path: str | Path, recipe: Recipe) -> np.ndarray:
        """A NIfTI mask on the study's source grid (a pseudo-mask) on this entry's grid."""
        from volseg.io import read_nifti

        data, affine = read_nifti(path, dtype=np.float32)
        if not same_grid(data.shape, affine, self.source_shape, self.source_affine):
            raise InputError(f"{path}: not on the grid of study {self.id}'s image")
        return self.working(recipe).mask_to_working(data > 0.5)

    def _array(self, kind: str, mmap: bool) -> np.ndarray:
        return np.load(self.folder / f"{self.id}.{kind}.npy", mmap_mode="r" if mmap else None)

    def image(self, mmap: bool = True) -> np.ndarray:
        """CT windowed to [0, 1], float16, shape ``self.shape``."""
        return self._array("image", mmap)

    def label(self, mmap: bool = True) -> np.ndarray | None:
        return self._array("label", mmap) if self.has_label else None

    def lungs(self, mmap: bool = True) -> np.ndarray | None:
        return self._array("lungs", mmap) if self.has_lungs else None

    @classmethod
    def read(cls, meta_path: Path) -> CachedVolume:
        meta = json.loads(Path(meta_path).read_text())
        return cls._from_meta(meta, Path(meta_path).parent)

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], folder: Path) -> CachedVolume:
        return cls(
            id=meta["id"],
            folder=folder,
            shape=tuple(meta["shape"]),
            affine=np.asarray(meta["affine"], dtype=np.float64),
            source_affine=np.asarray(meta["source_affine"], dtype=np.float64),
            source_shape=tuple(meta["source_shape"]),
            has_label=bool(meta["has_label"]),
            has_lungs=bool(meta["has_lungs"]),
            box=tuple(tuple(int(v) for v in b) for b in meta.get("box", ())),
        )


def _sources(study: Study, lungs: Path | None) -> dict[str, Path]:
    files = {"image": study.image}
    if study.mask is not None:
        files["label"] = study.mask
    if lungs is not None:
        files["lungs"] = lungs
    return files


def _valid_entry(meta_path: Path, sources: dict[str, Path], key: str) -> bool:
    """True if the entry exists, is complete and was made from these exact source files."""
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("settings_hash") != key:
        return False
    current = {k: file_fingerprint(p) for k, p in sources.items()}
    if meta.get("sources") != current:
        return False
    return all((meta_path.parent / f"{meta['id']}.{k}.npy").is_file() for k in sources)


def _save_npy(dest: Path, array: np.ndarray) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def preprocess_study(
    study: Study, lungs: Path | None, recipe: Recipe, folder: Path
) -> CachedVolume:
    """Apply ``recipe`` to one study (image, lesion and lung masks) and write its entry."""
    from volseg.io import read_nifti

    sources = _sources(study, lungs)
    image, affine = read_nifti(study.image, dtype=np.float32)
    masks = {}
    for key, path in sources.items():
        if key == "image":
            continue
        data, m_affine = read_nifti(path, dtype=np.float32)
        if not same_grid(data.shape, m_affine, image.shape, affine):
            raise InputError(
                f"{path}: {key} grid (shape {data.shape[:3]}) does not match "
                f"{study.image} (shape {image.shape[:3]}) or their affines differ"
            )
        masks[key] = data > 0.5
    if recipe.lung_density_hu is not None and "lungs" not in masks:
        raise InputError(f"{study.image}: data.lung_density_hu needs a lung mask")
    try:
        working, x = recipe.apply(image, affine, lungs=masks.get("lungs"))
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{study.image}: preprocessing failed ({cause_text(exc)})") from exc
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy(folder / f"{study.id}.image.npy", x[0, 0].numpy().astype(IMAGE_DTYPE))
    for key, mask in masks.items():
        _save_npy(folder / f"{study.id}.{key}.npy", working.mask_to_working(mask))
    meta = {
        "id": study.id,
        "format": CACHE_FORMAT,
        "settings_hash": folder.name,
        "recipe": recipe.to_json(),
        "shape": list(working.shape),
        "box": working.box_json(),
        "affine": working.affine.tolist(),
        "source_affine": np.asarray(affine, dtype=np.float64).tolist(),
        "source_shape": [int(s) for s in image.shape[:3]],
        "has_label": "label" in sources,
        "has_lungs": "lungs" in sources,
        "sources": {k: file_fingerprint(p) for k, p in sources.items()},
    }
    if working.lung_shift_hu is not None:
        meta["lung_shift_hu"] = round(working.lung_shift_hu, 1)
    write_json_atomic(folder / f"{study.id}.json", meta)
    return CachedVolume._from_meta(meta, folder)


def _lungs_for(study: Study, lungs_dir: Path | None) -> Path | None:
    if lungs_dir is not None:
        path = layout.lungs_path(lungs_dir, study.id)
        if not path.is_file():
            raise InputError(f"{path}: lung mask not found for {study.id}")
        return path
    return study.lungs


def _build_one(args: tuple[Study, Path | None, Recipe, Path]) -> CachedVolume:
    return preprocess_study(*args)


def build_cache(
    studies: Sequence[Study],
    recipe: Recipe,
    lungs_dir: str | Path | None,
    cache_dir: str | Path,
    num_workers: int | None = 0,
) -> dict[str, CachedVolume]:
    """Preprocess ``studies`` into ``cache_dir`` (skipping valid entries); returns them by id.

    ``recipe``: the run's :class:`volseg.recipe.Recipe` (``Recipe.from_config(cfg)``).
    ``lungs_dir``: folder of ``<id>_lungs.nii.gz`` masks, or None to use ``study.lungs``.
    Test studies should not be passed with their masks (``prepare`` drops them).
    ``num_workers`` > 0 preprocesses in that many processes, None in as many as the cores
    and the memory allow (:func:`volseg.data.workers.workers_for`).
    """
    from volseg.progress import progress

    key = settings_hash(recipe)
    folder = Path(cache_dir) / key
    lungs_root = Path(lungs_dir) if lungs_dir is not None else None

    result: dict[str, CachedVolume] = {}
    todo: list[tuple[Study, Path | None, Recipe, Path]] = []
    for study in studies:
        lungs = _lungs_for(study, lungs_root)
        meta_path = folder / f"{study.id}.json"
        if _valid_entry(meta_path, _sources(study, lungs), key):
            result[study.id] = CachedVolume.read(meta_path)
        else:
            todo.append((study, lungs, recipe, folder))
    log.info("cache %s: %d up to date, %d to build", folder, len(result), len(todo))
    workers = workers_for(num_workers, [args[0].image for args in todo])
    for vol in progress(map_ordered(_build_one, todo, workers), desc="cache", unit="study"):
        result[vol.id] = vol
    return {s.id: result[s.id] for s in studies}


def load_cache(folder: str | Path, ids: Sequence[str]) -> dict[str, CachedVolume]:
    """Open existing entries of a cache folder (``<cache_dir>/<hash>``) by study id."""
    folder = Path(folder)
    out = {}
    for sid in ids:
        meta_path = folder / f"{sid}.json"
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: no cache entry for {sid} (run `volseg prepare`)")
        out[sid] = CachedVolume.read(meta_path)
    return out


def cache_size_bytes(folder: str | Path) -> int:
    """Total size of the ``.npy`` files in a cache folder."""
    return sum(os.path.getsize(p) for p in Path(folder).glob("*.npy"))
