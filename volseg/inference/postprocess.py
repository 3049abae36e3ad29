"""Mask clean-up after thresholding: keep the lungs, drop specks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def remove_small_components(
    mask: np.ndarray, spacing_mm: Sequence[float], min_volume_mm3: float
) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_volume_mm3``."""
    mask = np.asarray(mask, dtype=bool)
    if min_volume_mm3 <= 0 or not mask.any():
        return mask
    labels, count = ndi.label(mask, structure=_CONNECTIVITY_26)
    voxel_mm3 = float(np.prod(spacing_mm))
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_mm3
    keep = sizes >= min_volume_mm3
    keep[0] = False
    return keep[labels]


def lesion_region(
    lungs: np.ndarray, spacing_mm: Sequence[float], margin_mm: float, block_mm: float = 2.0
) -> np.ndarray:
    """Where a lesion may lie: the lung mask grown by ``margin_mm`` (Euclidean, in mm).

    An automatic lung mask stops where the lung stops holding air, so consolidation against
    the chest wall or the mediastinum (soft-tissue HU) falls just outside it; the margin lets
    the network's prediction reach it. The distance is measured on the lungs' bounding box
    grown by the margin, in blocks of whole voxels up to ``block_mm`` (a block is lung if
    any of its voxels is), so a sub-millimetre whole-chest scan costs a fraction of its
    voxels; the margin is then exact to within one block.
    """
    lungs = np.asarray(lungs) > 0
    if margin_mm <= 0 or not lungs.any():
        return lungs
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    factor = np.maximum(1, np.floor(block_mm / spacing)).astype(int)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(lungs.any(axis=other))
        reach = int(np.ceil(margin_mm / spacing[axis])) + factor[axis]
        lo, hi = max(hits[0] - reach, 0), min(hits[-1] + 1 + reach, lungs.shape[axis])
        box.append(slice(lo, hi))
    crop = lungs[tuple(box)]
    size = np.asarray(crop.shape)
    padded = np.zeros(tuple(-(-size // factor) * factor), dtype=bool)
    padded[: size[0], : size[1], : size[2]] = crop
    blocks = padded.reshape(
        padded.shape[0] // factor[0],
        factor[0],
        padded.shape[1] // factor[1],
        factor[1],
        padded.shape[2] // factor[2],
        factor[2],
    ).any(axis=(1, 3, 5))
    near = ndi.distance_transform_edt(~blocks, sampling=spacing * factor) <= margin_mm
    for axis in range(3):
        near = np.repeat(near, factor[axis], axis=axis)
    region = np.zeros_like(lungs)
    region[tuple(box)] = near[: size[0], : size[1], : size[2]] | crop
    return region


def keep_touching(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` 26-connected to ``anchor`` (inside it or through other voxels
    of the mask that reach it)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    anchor = np.asarray(anchor) > 0
    labels, count = ndi.label(mask | anchor, structure=_CONNECTIVITY_26)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[anchor])] = True
    keep[0] = False
    return mask & keep[labels]
