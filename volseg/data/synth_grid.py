"""Voxel grids for the synthetic CT generator: LAS affines, world coordinates, smooth noise.

Every synthetic volume is built in a physical, RAS+ millimetre frame and sampled on the
voxel grid through its affine, so anatomy never depends on how the array is stored. A
*render grid* subdivides each slice into thinner sub-slices; averaging them back mimics
the slice-sensitivity profile (partial volume) of a thick-slice CT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def las_affine(
    shape: Sequence[int], spacing: Sequence[float], center_mm: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """A 4×4 LAS affine (axis 0 right→left, 1 posterior→anterior, 2 inferior→superior).

    The volume's centre voxel lands on ``center_mm`` (RAS+ world coordinates).
    """
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, sy, sz, 1.0])
    center_index = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_mm, dtype=np.float64) - affine[:3, :3] @ center_index
    return affine


def subdivide_slices(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of a grid whose array axis 2 is split into ``factor`` sub-slices per slice.

    Sub-slice ``m`` of slice ``k`` has index ``k * factor + m``; the sub-slice centres sit
    symmetrically around the parent slice centre, so their mean is the parent slice.
    """
    out = np.array(affine, dtype=np.float64)
    out[:3, 2] = affine[:3, 2] / factor
    out[:3, 3] = affine[:3, 3] - affine[:3, 2] * (factor - 1) / (2.0 * factor)
    return out


def average_subslices(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over each group of ``factor`` consecutive sub-slices along axis 2 (float32)."""
    if factor == 1:
        return volume.astype(np.float32, copy=False)
    x, y, zr = volume.shape
    return volume.reshape(x, y, zr // factor, factor).mean(axis=3, dtype=np.float32)


def world_axes(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """World (RAS+ mm) coordinate of every index along each array axis, as broadcastable arrays.

    Returns ``(x, y, z)`` with shapes ``(X,1,1)``, ``(1,Y,1)``, ``(1,1,Z)``. Only axis-aligned
    affines (any flips, no rotation) qualify, which is what the generator builds.
    """
    affine = np.asarray(affine, dtype=np.float64)
    rot = affine[:3, :3]
    perm = np.argmax(np.abs(rot), axis=0)
    if sorted(perm.tolist()) != [0, 1, 2] or np.count_nonzero(np.round(rot, 9)) != 3:
        raise ValueError("world_axes needs an axis-aligned affine")
    coords: list[np.ndarray | None] = [None, None, None]
    for axis, world in enumerate(perm):
        values = affine[world, axis] * np.arange(shape[axis]) + affine[world, 3]
        view = [1, 1, 1]
        view[axis] = shape[axis]
        coords[world] = values.astype(np.float32).reshape(view)
    return tuple(coords)  # type: ignore[return-value]


def world_to_index(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Continuous voxel indices of world points ``(N, 3)``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return pts @ inv[:3, :3].T + inv[:3, 3]


def resize(field: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linearly resample a field spanning the same box onto a grid of ``shape`` (float32).

    Voxel centres map as in ``scipy.ndimage.zoom(..., grid_mode=True)``; done one axis at a
    time (smallest output first), which is several times faster than a 3D zoom.
    """
    out = field.astype(np.float32, copy=False)
    for axis in sorted(range(out.ndim), key=lambda a: shape[a] / out.shape[a]):
        n_in, n_out = out.shape[axis], int(shape[axis])
        if n_in == n_out:
            continue
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
        lo = (
            np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
            if n_in > 1
            else np.zeros(n_out, np.intp)
        )
        frac = (pos - lo).astype(np.float32) if n_in > 1 else np.zeros(n_out, np.float32)
        view = [1] * out.ndim
        view[axis] = n_out
        frac = frac.reshape(view)
        a = np.take(out, lo, axis=axis)
        b = np.take(out, np.minimum(lo + 1, n_in - 1), axis=axis)
        out = a + (b - a) * frac
    return out


def smooth_noise(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    corr_mm: float,
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``corr_mm``.

    White noise on a coarse grid (about ``corr_mm / 2`` per voxel) is Gaussian-smoothed and
    interpolated to ``shape``: fast, and the same physical look whatever the voxel size.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape, dtype=np.float64) * spacing
    coarse_step = np.maximum(corr_mm / 2.0, spacing)
    coarse = np.maximum(np.ceil(extent / coarse_step).astype(int) + 2, 2)
    white = rng.standard_normal(tuple(int(c) for c in coarse)).astype(np.float32)
    smooth = ndimage.gaussian_filter(white, sigma=1.0, mode="wrap")
    field = resize(smooth, shape)
    sample = field[::3, ::3, :]  # moments from a subsample: cheap, and plenty of voxels
    field -= np.float32(sample.mean(dtype=np.float64))
    std = float(sample.std(dtype=np.float64))
    if std > 0:
        field /= np.float32(std)
    return field


def sigmoid(value: np.ndarray) -> np.ndarray:
    """Logistic function, float32, without overflow warnings."""
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(value, dtype=np.float32)))).astype(np.float32)
