"""Lesion-wise detection: connected components (26-connectivity) matched by overlap.

A reference lesion is *detected* when any predicted voxel overlaps it; a predicted lesion is
a *false positive* when it overlaps no reference voxel. Because one predicted blob can cover
two reference lesions (or the reverse), the counts on the reference side and on the
prediction side are kept apart: lesion sensitivity uses reference components, lesion
precision uses predicted components.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of a 3D binary mask: ``(labels, count)``."""
    mask = np.asarray(mask) > 0
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got {mask.ndim} dimensions")
    labels, count = ndimage.label(mask, structure=CONNECTIVITY_26)
    return labels, int(count)


def _overlapping_labels(labels: np.ndarray, other: np.ndarray) -> set[int]:
    """Component labels (>0) of ``labels`` that share at least one voxel with ``other``."""
    hit = np.unique(labels[other])
    return {int(v) for v in hit if v > 0}


def lesion_detection(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | int]:
    """Per-lesion detection counts and rates for one case.

    Returns ``n_ref_lesions``, ``n_pred_lesions``, ``n_detected`` (reference lesions hit),
    ``n_missed``, ``n_true_pred`` (predicted lesions touching the reference), ``n_false_pos``,
    ``lesion_sensitivity`` = detected / reference lesions (NaN without reference lesions),
    ``lesion_precision`` = true predicted / predicted lesions (NaN without predicted lesions),
    and ``lesion_f1``, their harmonic mean, with these conventions: no lesions on either
    side → 1.0 (nothing to find, nothing claimed); lesions on exactly one side → 0.0.
    """
    pred = np.asarray(pred) > 0
    ref = np.asarray(ref) > 0
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    ref_labels, n_ref = label_components(ref)
    pred_labels, n_pred = label_components(pred)
    n_detected = len(_overlapping_labels(ref_labels, pred))
    n_true_pred = len(_overlapping_labels(pred_labels, ref))
    sens = n_detected / n_ref if n_ref else math.nan
    prec = n_true_pred / n_pred if n_pred else math.nan
    if n_ref == 0 and n_pred == 0:
        f1 = 1.0
    elif n_ref == 0 or n_pred == 0:
        f1 = 0.0
    else:
        f1 = 2.0 * sens * prec / (sens + prec) if (sens + prec) > 0 else 0.0
    return {
        "n_ref_lesions": n_ref,
        "n_pred_lesions": n_pred,
        "n_detected": n_detected,
        "n_missed": n_ref - n_detected,
        "n_true_pred": n_true_pred,
        "n_false_pos": n_pred - n_true_pred,
        "lesion_sensitivity": sens,
        "lesion_precision": prec,
        "lesion_f1": f1,
    }
