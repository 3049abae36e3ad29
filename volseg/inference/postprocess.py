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
