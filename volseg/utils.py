"""Small helpers several rooms share: JSON-safe values, eval mode, did-you-mean, grids, files.

Nothing here imports torch at module level, so the CLI stays fast to start.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from volseg.errors import InputError

GRID_ATOL_MM = 1e-3
"""Two grids are the same when their shapes are equal and their affines agree this closely."""


def json_safe(obj: Any) -> Any:
    """NaN/inf (undefined metrics) to None, tuples to lists, paths to strings, recursively,
    so the result is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[Any]:
    """``module`` in eval mode inside the block; its previous mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def did_you_mean(name: str, options: Iterable[str], cutoff: float = 0.5) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or an empty string."""
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


def same_grid(
    shape_a: Iterable[int],
    affine_a: Any,
    shape_b: Iterable[int],
    affine_b: Any,
    atol: float = GRID_ATOL_MM,
) -> bool:
    """True when two volumes share their (spatial) shape and affine within ``atol`` mm."""
    a, b = tuple(int(s) for s in shape_a)[:3], tuple(int(s) for s in shape_b)[:3]
    return a == b and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), rtol=0.0, atol=atol)
    )


def file_fingerprint(path: str | Path | None, resolve: bool = True) -> dict[str, Any] | None:
    """Path, size and mtime of a file: changes whenever the file does (None for None)."""
    if path is None:
        return None
    p = Path(path)
    st = p.stat()
    return {
        "path": str(p.resolve() if resolve else p),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def default_device() -> Any:
    """CUDA when present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def listing_fingerprint(
    folder: str | Path, exclude: tuple[str, ...] = (), prune: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """Fingerprint of every file under ``folder``: relative path, size and mtime.

    Cheap (no file is read) yet changes when a file is added, removed, replaced or
    rewritten. Hidden files and folders, file names in ``exclude`` and the folders in
    ``prune`` (e.g. a run directory kept inside the dataset) are ignored. Raises
    :class:`InputError` when ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    pruned = {Path(p).resolve() for p in prune}
    entries = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and (Path(dirpath) / d).resolve() not in pruned
        )
        for name in sorted(filenames):
            if name.startswith(".") or name in exclude:
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:  # vanished between listing and stat
                continue
            entries.append([path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
            total += st.st_size
    return {
        "folder": str(folder),
        "files": len(entries),
        "bytes": total,
        "hash": hashlib.sha256(
            json.dumps(entries, sort_keys=True, default=str).encode()
        ).hexdigest()[:16],
    }


T = TypeVar("T")


def evenly_spaced(items: Sequence[T], at_most: int) -> list[T]:
    """At most ``at_most`` of ``items``: every k-th from the first, so that a capped sample
    still spreads over the whole (sorted) sequence."""
    step = max(1, math.ceil(len(items) / at_most))
    return list(items[::step][:at_most])


def mask_box(mask: np.ndarray, grow: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """The bounding box of ``mask``'s nonzero voxels grown by ``grow`` voxels (one number,
    or one per axis), clipped to the array; empty slices when there are none. Work on a
    sparse mask is done on this box."""
    mask = np.asarray(mask)
    if not mask.any():
        return tuple(slice(0, 0) for _ in mask.shape)
    reach = [int(grow)] * mask.ndim if isinstance(grow, (int, np.integer)) else list(grow)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = int(hits[0]) - int(reach[axis]), int(hits[-1]) + 1 + int(reach[axis])
        box.append(slice(max(lo, 0), min(hi, mask.shape[axis])))
    return tuple(box)
