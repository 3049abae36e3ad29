"""Preprocessing cache: decode and preprocess each ``.nii.gz`` once, then memory-map.

Layout::

    <cache_dir>/<settings_hash>/<id>.image.npy   float16, (X, Y, Z) on the RAS grid
    <cache_dir>/<settings_hash>/<id>.label.npy   uint8 lesion mask (labeled studies)
    <cache_dir>/<settings_hash>/<id>.lungs.npy   uint8 lung mask
    <cache_dir>/<settings_hash>/<id>.json        grid affine, shapes, source fingerprints

``settings_hash`` covers every preprocessing setting (spacing, HU window, crop, transform
version); each entry's JSON records the size and mtime of its source files, so editing a
source or changing preprocessing invalidates exactly the entries concerned. The JSON is
written last and atomically: it marks a complete entry.
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
from volseg.data.transforms import preprocessing_settings
from volseg.errors import InputError, cause_text
from volseg.io import atomic_path, write_json_atomic
from volseg.utils import file_fingerprint

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
IMAGE_DTYPE = np.float16
GRID_ATOL_MM = 1e-3
"""Masks must lie on their image's grid: affines equal within this (mm, element-wise)."""


def settings_hash(spacing: Sequence[float], hu_window: Sequence[float]) -> str:
    """Short stable hash of the preprocessing settings (names the cache sub-folder)."""
    payload = dict(preprocessing_settings(spacing, hu_window), cache_format=CACHE_FORMAT)
    text = json.dumps(payload, sort_keys=True)
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

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

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
    study: Study,
    lungs: Path | None,
    spacing: Sequence[float],
    hu_window: Sequence[float],
    folder: Path,
) -> CachedVolume:
    """Preprocess one study with :func:`preprocess_transforms` and write its cache entry."""
    from volseg.data.transforms import preprocess_transforms
    from volseg.io import load_nifti

    sources = _sources(study, lungs)
    # A clear InputError for a missing/corrupt file or a mask on another grid, before MONAI.
    ref = load_nifti(study.image)
    for key, path in sources.items():
        img = load_nifti(path)
        if key != "image" and (
            img.shape[:3] != ref.shape[:3]
            or not np.allclose(img.affine, ref.affine, atol=GRID_ATOL_MM)
        ):
            raise InputError(
                f"{path}: {key} grid (shape {img.shape[:3]}) does not match "
                f"{study.image} (shape {ref.shape[:3]}) or their affines differ"
            )
    chain = preprocess_transforms(spacing, hu_window, keys=tuple(sources))
    try:
        out = chain({k: str(p) for k, p in sources.items()})
    except Exception as exc:  # MONAI wraps the cause in "applying transform <object ...>"
        raise InputError(f"{study.image}: preprocessing failed ({cause_text(exc)})") from exc
    image = out["image"]
    shape = tuple(int(s) for s in image.shape[1:])
    for k in sources:
        if tuple(out[k].shape[1:]) != shape:
            raise InputError(
                f"{sources[k]}: grid does not match {study.image} "
                f"(preprocessed shape {tuple(out[k].shape[1:])} vs {shape})"
            )
    source_meta = out["image_meta_dict"]
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy(folder / f"{study.id}.image.npy", image[0].numpy().astype(IMAGE_DTYPE))
    for k in sources:
        if k != "image":
            _save_npy(folder / f"{study.id}.{k}.npy", (out[k][0].numpy() > 0.5).astype(np.uint8))
    meta = {
        "id": study.id,
        "format": CACHE_FORMAT,
        "settings_hash": folder.name,
        "settings": preprocessing_settings(spacing, hu_window),
        "shape": list(shape),
        "affine": np.asarray(image.affine, dtype=np.float64).tolist(),
        "source_affine": np.asarray(source_meta["original_affine"], dtype=np.float64).tolist(),
        "source_shape": [int(s) for s in np.asarray(source_meta["spatial_shape"])[:3]],
        "has_label": "label" in sources,
        "has_lungs": "lungs" in sources,
        "sources": {k: file_fingerprint(p) for k, p in sources.items()},
    }
    write_json_atomic(folder / f"{study.id}.json", meta)
    return CachedVolume._from_meta(meta, folder)


def _lungs_for(study: Study, lungs_dir: Path | None) -> Path | None:
    if lungs_dir is not None:
        path = layout.lungs_path(lungs_dir, study.id)
        if not path.is_file():
            raise InputError(f"{path}: lung mask not found for {study.id}")
        return path
    return study.lungs


def _build_one(args: tuple[Study, Path | None, tuple, tuple, Path]) -> CachedVolume:
    import torch

    torch.set_num_threads(1)
    return preprocess_study(*args)


def build_cache(
    studies: Sequence[Study],
    cfg: Any,
    lungs_dir: str | Path | None,
    cache_dir: str | Path,
    num_workers: int = 0,
) -> dict[str, CachedVolume]:
    """Preprocess ``studies`` into ``cache_dir`` (skipping valid entries); returns them by id.

    ``cfg``: the ``data`` config section (or the whole config) for spacing and HU window.
    ``lungs_dir``: folder of ``<id>_lungs.nii.gz`` masks, or None to use ``study.lungs``.
    Test studies should not be passed with their masks (``prepare`` drops them).
    ``num_workers`` > 0 preprocesses in that many processes.
    """
    from volseg.progress import progress

    data_cfg = getattr(cfg, "data", cfg)
    spacing = tuple(float(s) for s in data_cfg.spacing)
    hu_window = tuple(float(h) for h in data_cfg.hu_window)
    key = settings_hash(spacing, hu_window)
    folder = Path(cache_dir) / key
    lungs_root = Path(lungs_dir) if lungs_dir is not None else None

    result: dict[str, CachedVolume] = {}
    todo: list[tuple[Study, Path | None, tuple, tuple, Path]] = []
    for study in studies:
        lungs = _lungs_for(study, lungs_root)
        meta_path = folder / f"{study.id}.json"
        if _valid_entry(meta_path, _sources(study, lungs), key):
            result[study.id] = CachedVolume.read(meta_path)
        else:
            todo.append((study, lungs, spacing, hu_window, folder))
    log.info("cache %s: %d up to date, %d to build", folder, len(result), len(todo))
    if todo and num_workers > 0:
        from concurrent.futures import ProcessPoolExecutor

        # The platform's default start method, as torch's DataLoader uses (fork on Linux).
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            for vol in progress(pool.map(_build_one, todo), total=len(todo), desc="cache"):
                result[vol.id] = vol
    else:
        for args in progress(todo, desc="cache"):
            vol = preprocess_study(*args)
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


def resample_to_grid(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    mode: str = "nearest",
) -> np.ndarray:
    """Resample a 3D array from one voxel grid to another, using only the affines.

    Used to bring a mask written in source geometry (e.g. a pseudo-mask) onto a cached
    grid (``vol.affine``, ``vol.shape``), or a prediction on the cached grid back to the
    source (``vol.source_affine``, ``vol.source_shape``). Outside the source: zero.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    img = MetaTensor(
        torch.as_tensor(np.asarray(array, dtype=np.float32))[None],
        affine=torch.as_tensor(np.asarray(src_affine, dtype=np.float64)),
    )
    out = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float64)(
        img,
        dst_affine=torch.as_tensor(np.asarray(dst_affine, dtype=np.float64)),
        spatial_size=tuple(int(s) for s in dst_shape),
    )
    return np.asarray(out[0].numpy(), dtype=np.float32)


def mask_on_grid(path: str | Path, vol: CachedVolume) -> np.ndarray:
    """A NIfTI mask (any geometry) resampled nearest-neighbour onto ``vol``'s grid, uint8."""
    from volseg.io import read_nifti

    data, affine = read_nifti(path, dtype=np.float32)
    out = resample_to_grid(data, affine, vol.affine, vol.shape, mode="nearest")
    return (out > 0.5).astype(np.uint8)


def prob_on_grid(path: str | Path, vol: CachedVolume) -> np.ndarray:
    """A NIfTI probability/weight map resampled bilinearly onto ``vol``'s grid, float32."""
    from volseg.io import read_nifti

    data, affine = read_nifti(path, dtype=np.float32)
    return resample_to_grid(data, affine, vol.affine, vol.shape, mode="bilinear")


def cache_size_bytes(folder: str | Path) -> int:
    """Total size of the ``.npy`` files in a cache folder."""
    return sum(os.path.getsize(p) for p in Path(folder).glob("*.npy"))
