"""Mask clean-up after thresholding: keep the lungs, drop specks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from volseg.utils import mask_box

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def keep_components(
    mask: np.ndarray,
    spacing_mm: Sequence[float],
    min_volume_mm3: float = 0.0,
    touching: np.ndarray | None = None,
) -> np.ndarray:
    """The 26-connected components of ``mask`` of at least ``min_volume_mm3`` that, when
    ``touching`` is given, touch it: hold one of its voxels or lie 26-adjacent to one (so
    the mask's voxels connected to ``touching``, in it or through the mask).

    One labelling on the mask's bounding box (grown by a voxel): a lesion mask fills a few
    per cent of a whole-chest scan, so this costs a fraction of labelling every voxel.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or (min_volume_mm3 <= 0 and touching is None):
        return mask
    box = mask_box(mask, grow=1)
    labels, count = ndi.label(mask[box], structure=_CONNECTIVITY_26)
    keep = np.ones(count + 1, dtype=bool)
    if min_volume_mm3 > 0:
        voxel_mm3 = float(np.prod(spacing_mm))
        keep &= np.bincount(labels.ravel(), minlength=count + 1) * voxel_mm3 >= min_volume_mm3
    if touching is not None:
        keep &= _touching(labels, count, np.asarray(touching)[box] > 0)
    keep[0] = False
    out = np.zeros_like(mask)
    out[box] = keep[labels]
    return out


def _touching(labels: np.ndarray, count: int, anchor: np.ndarray) -> np.ndarray:
    """Per label of ``labels``, whether its component holds or borders a voxel of
    ``anchor`` (same box, a voxel wider than the labels on every side the array allows)."""
    touches = np.zeros(count + 1, dtype=bool)
    touches[np.unique(labels[anchor])] = True
    apart = (labels > 0) & ~touches[labels]
    if apart.any():  # components wholly outside the anchor: does a neighbour lie in it?
        box = mask_box(apart, grow=1)
        near = ndi.binary_dilation(anchor[box], structure=_CONNECTIVITY_26)
        touches[np.unique(labels[box][near & apart[box]])] = True
    return touches


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
    reach = [int(np.ceil(margin_mm / spacing[a])) + int(factor[a]) for a in range(3)]
    box = mask_box(lungs, grow=reach)
    crop = lungs[box]
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
    region[box] = near[: size[0], : size[1], : size[2]] | crop
    return region
