"""Choosing the residual threshold that turns residual maps into pseudo-masks.

With labeled scans the threshold is calibrated: of a grid of candidates (quantiles
of the pooled in-lung residuals), the one whose cleaned masks reach the highest mean Dice
against the true masks. Without them it is a high percentile of the residuals the generator
leaves on healthy (CT-0) lungs, i.e. a false-positive budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from volseg.inference.postprocess import keep_components
from volseg.utils import mask_box

MIN_THRESHOLD = 1e-6
"""Thresholds are kept above this: a zero threshold would mark every voxel."""


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Whole-volume Dice of two binary masks; 1.0 when both are empty."""
    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(pred, ref).sum()) / total


def binarize(
    residual: np.ndarray,
    threshold: float,
    spacing: Sequence[float],
    min_component_mm3: float = 0.0,
) -> np.ndarray:
    """``residual >= threshold`` (and > 0) without 26-connected specks under ``min_component_mm3``."""
    residual = np.asarray(residual)
    mask = (residual >= threshold) & (residual > 0)
    return keep_components(mask, spacing, min_component_mm3)


def candidate_thresholds(
    residuals: Sequence[np.ndarray], n: int = 20, low_q: float = 0.2, high_q: float = 0.999
) -> np.ndarray:
    """Increasing candidate thresholds from the pooled positive residual values.

    ``n`` quantiles (``low_q`` .. ``high_q``), the midpoints between neighbouring quantiles
    (so a gap between background and lesion values gets a candidate inside it) and ``n // 2``
    evenly spaced values up to the maximum.
    """
    values = [np.asarray(r, dtype=np.float32).ravel() for r in residuals]
    pooled = np.concatenate([v[v > 0] for v in values]) if values else np.zeros(0, np.float32)
    if pooled.size == 0:
        return np.array([MIN_THRESHOLD])
    if pooled.size > 2_000_000:  # quantiles of an even subsample are plenty for a grid
        pooled = pooled[:: pooled.size // 1_000_000]
    qs = np.quantile(pooled.astype(np.float64), np.linspace(low_q, high_q, n))
    mids = 0.5 * (qs[:-1] + qs[1:])
    linear = np.linspace(0.0, float(pooled.max()), max(n // 2, 1) + 2)[1:-1]
    return np.unique(np.maximum(np.concatenate([qs, mids, linear]), MIN_THRESHOLD))


@dataclass
class Calibration:
    """The chosen threshold, its mean Dice and the whole curve it was picked from."""

    threshold: float
    score: float
    candidates: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def calibrate_threshold(
    residuals: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float]],
    min_component_mm3: float = 0.0,
    candidates: Sequence[float] | None = None,
) -> Calibration:
    """The candidate threshold maximising the mean Dice of cleaned masks against ``masks``.

    Every candidate is scored with the same clean-up the pseudo-masks get (components under
    ``min_component_mm3`` removed). Among equally good candidates the middle one is taken,
    which sits furthest from both failure modes.
    """
    if not residuals or len(residuals) != len(masks) or len(masks) != len(spacings):
        raise ValueError("need the same, non-zero number of residuals, masks and spacings")
    grid = np.asarray(
        candidate_thresholds(residuals) if candidates is None else candidates, dtype=np.float64
    )
    if grid.size == 0 or np.any(grid <= 0):
        raise ValueError("candidate thresholds must be positive")
    scores = np.zeros(grid.size)
    for residual, mask, spacing in zip(residuals, masks, spacings, strict=True):
        # Every candidate's mask lies where the residual is positive: label components in
        # that box only, and count the reference voxels outside it in the Dice denominator.
        box = mask_box(np.asarray(residual) > 0)
        ref = np.asarray(mask) > 0
        ref_total, ref_box = int(ref.sum()), ref[box]
        for i, t in enumerate(grid):
            pred = binarize(residual[box], float(t), spacing, min_component_mm3)
            total = int(pred.sum()) + ref_total
            overlap = float(np.logical_and(pred, ref_box).sum())
            scores[i] += 1.0 if total == 0 else 2.0 * overlap / total
    scores /= len(residuals)
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    pick = int(best[len(best) // 2])
    return Calibration(float(grid[pick]), float(scores[pick]), grid.tolist(), scores.tolist())


def healthy_threshold(
    residuals: Sequence[np.ndarray], lungs: Sequence[np.ndarray], percentile: float = 99.5
) -> float:
    """``percentile`` of the in-lung residuals of healthy scans (at least ``MIN_THRESHOLD``)."""
    if not residuals or len(residuals) != len(lungs):
        raise ValueError("need the same, non-zero number of residuals and lung masks")
    values = np.concatenate(
        [np.asarray(r)[np.asarray(m) > 0].ravel() for r, m in zip(residuals, lungs, strict=True)]
    )
    if values.size == 0:
        raise ValueError("the healthy scans have no lung voxels")
    return max(float(np.percentile(values, percentile)), MIN_THRESHOLD)
