"""Residual maps: what the healthy-lung generator removes from a scan, inside the lungs.

``restore_volume`` runs the generator over a whole working-grid volume with MONAI's
gaussian-blended sliding window (the one in :mod:`volseg.inference.sliding`). ``residual_map`` keeps the positive part of
``input - G(input)`` (brighter than healthy lung: ground glass and consolidation), inside the
lungs, smoothed with a lung-normalised gaussian so that the lung border is not dimmed.
``soft_map`` turns a residual into a [0, 1] map whose 0.5 level is the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn


def restore_volume(
    generator: nn.Module,
    image: np.ndarray,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``G(image)`` for a whole ``(X, Y, Z)`` volume in [0, 1], by the one sliding window
    (:func:`volseg.inference.sliding.sliding_window`, full precision)."""
    from volseg.inference.sliding import sliding_window

    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None].to(device)
    out = sliding_window(
        generator, x, roi_size, overlap=overlap, sw_batch_size=sw_batch_size, precision="fp32"
    )
    return out[0, 0].cpu().numpy()


def residual_map(
    image: np.ndarray,
    restored: np.ndarray,
    lungs: np.ndarray,
    spacing: Sequence[float],
    sigma_mm: float,
) -> np.ndarray:
    """Positive residual ``max(image - restored, 0)`` in the lungs, gaussian-smoothed (float32).

    Smoothing is normalised by the smoothed lung mask (``G(r·l) / G(l)``), so voxels near the
    lung border average only lung voxels instead of being pulled towards the zeros outside.
    ``sigma_mm`` is converted to voxels per axis with ``spacing``; 0 disables smoothing.
    """
    image = np.asarray(image, dtype=np.float32)
    restored = np.asarray(restored, dtype=np.float32)
    if image.shape != restored.shape or image.shape != np.shape(lungs):
        raise ValueError(
            f"image {image.shape}, restored {restored.shape} and lungs {np.shape(lungs)} differ"
        )
    inside = np.asarray(lungs) > 0
    residual = np.clip(image - restored, 0.0, None) * inside
    if sigma_mm > 0 and inside.any():
        sigma = [sigma_mm / float(s) for s in spacing]
        num = ndi.gaussian_filter(residual, sigma, mode="constant")
        den = ndi.gaussian_filter(inside.astype(np.float32), sigma, mode="constant")
        residual = np.where(inside, num / np.maximum(den, 1e-6), 0.0)
    return residual.astype(np.float32)


def soft_map(residual: np.ndarray, threshold: float) -> np.ndarray:
    """``clip(residual / (2·threshold), 0, 1)``: a soft lesion map whose 0.5 level is ``threshold``."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    return np.clip(np.asarray(residual, dtype=np.float32) / (2.0 * threshold), 0.0, 1.0)
