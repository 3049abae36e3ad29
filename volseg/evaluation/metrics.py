"""Per-case segmentation metrics over the WHOLE volume, honouring voxel spacing.

Every overlap metric is computed from the four voxel counts of the entire volume
(TP, FP, FN, TN), never as a maximum or "any" over pixels or slices. Surface metrics use
MONAI (``compute_hausdorff_distance`` with ``percentile=95``, ``compute_surface_dice``) with
the physical spacing in mm, so anisotropic CT (e.g. 0.7 × 0.7 × 8 mm) is measured in mm.

Conventions for empty masks (a ratio whose denominator is zero is undefined → NaN; NaN
values are excluded from means and counted as missing in the summary):

==========================  ===================  ==========================  =============
metric                      both empty           reference empty only        prediction
                                                                             empty only
==========================  ===================  ==========================  =============
Dice, IoU                   1.0                  0.0                         0.0
sensitivity TP/(TP+FN)      NaN                  NaN                         0.0
precision TP/(TP+FP)        NaN                  0.0                         NaN
specificity TN/(TN+FP)      1.0                  < 1                         1.0
HD95 (mm)                   0.0                  NaN                         NaN
NSD at tolerance            1.0                  0.0                         0.0
==========================  ===================  ==========================  =============

Specificity is NaN only if the whole volume is foreground in the reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from volseg.evaluation.lesions import lesion_detection
from volseg.quantify import quantify

CONVENTIONS: dict[str, str] = {
    "aggregation": "all overlap metrics from whole-volume voxel counts (TP, FP, FN, TN); "
    "summaries are over cases, NaN values excluded and counted as missing",
    "dice_iou": "both masks empty -> 1.0; exactly one empty -> 0.0",
    "sensitivity": "TP/(TP+FN); NaN (undefined) when the reference is empty",
    "precision": "TP/(TP+FP); NaN (undefined) when the prediction is empty",
    "specificity": "TN/(TN+FP) over the whole volume; NaN only if the reference fills it",
    "hd95_mm": "95th-percentile symmetric Hausdorff distance in mm (MONAI); both empty -> "
    "0.0; exactly one empty -> NaN (undefined, reported as missing)",
    "nsd": "normalised surface Dice at the tolerance in mm (MONAI); both empty -> 1.0; "
    "exactly one empty -> 0.0",
    "lesions": "26-connected components; a reference lesion is detected if any predicted "
    "voxel overlaps it; a predicted lesion overlapping no reference voxel is a false "
    "positive; lesion sensitivity NaN without reference lesions, lesion precision NaN "
    "without predicted lesions; lesion F1 1.0 if neither side has lesions, 0.0 if only one",
    "volume": "volume_diff_ml = predicted - reference (mL); rel_volume_error_pct = "
    "100 * |diff| / reference volume, NaN when the reference is empty",
    "involvement": "lesion voxels inside the lung mask / lung voxels (%, volseg.quantify); "
    "involvement_error_pct = predicted - reference in percentage points; CT grade from "
    "MosMed's rule (CT-0 none, CT-1 <25, CT-2 25-50, CT-3 50-75, CT-4 >75 %)",
}


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) > 0


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def confusion_counts(pred: np.ndarray, ref: np.ndarray) -> dict[str, int]:
    """Voxel counts TP, FP, FN, TN over the whole volume."""
    pred, ref = _as_bool(pred), _as_bool(ref)
    _check_same_shape(pred, ref)
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    tn = int(pred.size - tp - fp - fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity and precision from whole-volume voxel counts."""
    c = confusion_counts(pred, ref)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    both_empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if both_empty else 2.0 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
    }


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel.

    Surface distances only involve mask voxels and their edges, so this does not change
    HD95 or NSD (the margin keeps edge detection identical). MONAI crops internally as well;
    doing it first avoids turning two whole CT volumes into float tensors per metric.
    """
    coords = np.nonzero(pred | ref)
    slices = tuple(
        slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, n))
        for c, n in zip(coords, pred.shape, strict=True)
    )
    return pred[slices], ref[slices]


def surface_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, float]:
    """HD95 (mm) and normalised surface Dice at ``nsd_tolerance_mm`` (MONAI, spacing-aware).

    Empty masks follow the module's conventions (MONAI itself returns NaN for both-empty).
    """
    pred, ref = _as_bool(pred), _as_bool(ref)
    _check_same_shape(pred, ref)
    if len(spacing_mm) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} does not match {pred.ndim}D masks")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return {"hd95_mm": 0.0, "nsd": 1.0}
    if not (has_pred and has_ref):
        return {"hd95_mm": math.nan, "nsd": 0.0}

    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred, ref = _crop_to_union(pred, ref)
    spacing = [float(s) for s in spacing_mm]
    y_pred = torch.from_numpy(np.ascontiguousarray(pred))[None, None].float()
    y = torch.from_numpy(np.ascontiguousarray(ref))[None, None].float()
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own internal use of a deprecated argument.
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=spacing
        )
        nsd = compute_surface_dice(
            y_pred, y, [float(nsd_tolerance_mm)], include_background=True, spacing=spacing
        )
    return {"hd95_mm": float(hd95.item()), "nsd": float(nsd.item())}


def volume_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    lungs: np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """Lesion volumes (mL) and their errors; with a lung mask, involvement % and CT grades."""
    q_pred = quantify(pred, lungs, spacing_mm)
    q_ref = quantify(ref, lungs, spacing_mm)
    v_pred = float(q_pred["lesion_volume_ml"] or 0.0)
    v_ref = float(q_ref["lesion_volume_ml"] or 0.0)
    diff = v_pred - v_ref
    out: dict[str, float | int | None] = {
        "pred_volume_ml": v_pred,
        "ref_volume_ml": v_ref,
        "volume_diff_ml": diff,
        "abs_volume_error_ml": abs(diff),
        "rel_volume_error_pct": 100.0 * abs(diff) / v_ref if v_ref > 0 else math.nan,
        "lung_volume_ml": math.nan,
        "pred_involvement_pct": math.nan,
        "ref_involvement_pct": math.nan,
        "involvement_error_pct": math.nan,
        "abs_involvement_error_pct": math.nan,
        "pred_grade": None,
        "ref_grade": None,
    }
    if lungs is not None and q_ref["involvement_pct"] is not None:
        inv_pred = float(q_pred["involvement_pct"])  # type: ignore[arg-type]
        inv_ref = float(q_ref["involvement_pct"])
        out.update(
            lung_volume_ml=float(q_ref["lung_volume_ml"]),  # type: ignore[arg-type]
            pred_involvement_pct=inv_pred,
            ref_involvement_pct=inv_ref,
            involvement_error_pct=inv_pred - inv_ref,
            abs_involvement_error_pct=abs(inv_pred - inv_ref),
            pred_grade=q_pred["ct_grade"],
            ref_grade=q_ref["ct_grade"],
        )
    return out


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    lungs: np.ndarray | None = None,
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, float | int | None]:
    """Every metric for one case, as a flat dict (see :data:`CONVENTIONS` for empty masks).

    ``pred``, ``ref`` (and ``lungs``) are 3D masks on the same grid (non-zero = foreground);
    ``spacing`` is the voxel size in mm along each array axis (e.g. from
    :func:`volseg.quantify.spacing_from_affine`). Keys: voxel counts ``tp fp fn tn``;
    ``dice iou sensitivity specificity precision``; ``hd95_mm nsd``; lesion detection
    (:func:`volseg.evaluation.lesions.lesion_detection`); volumes, involvement and grades
    (:func:`volume_metrics`). Undefined values are NaN, grades without lungs are None.
    """
    pred, ref = _as_bool(pred), _as_bool(ref)
    _check_same_shape(pred, ref)
    if pred.ndim != 3:
        raise ValueError(f"expected 3D masks, got shape {pred.shape}")
    if lungs is not None:
        lungs = _as_bool(lungs)
        if lungs.shape != ref.shape:
            raise ValueError(f"shape mismatch: lungs {lungs.shape} vs reference {ref.shape}")
    result: dict[str, float | int | None] = {}
    result.update(confusion_counts(pred, ref))
    result.update(overlap_metrics(pred, ref))
    result.update(surface_metrics(pred, ref, spacing, nsd_tolerance_mm))
    result.update(lesion_detection(pred, ref))
    result.update(volume_metrics(pred, ref, spacing, lungs))
    return result


def _check_same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")


def type_metrics(
    pred_types: np.ndarray, ref_types: np.ndarray, spacing_mm: Sequence[float]
) -> dict[str, float]:
    """Per lesion type (1 ground glass, 2 consolidation): Dice and predicted minus reference
    volume (mL). Dice is NaN where the reference holds none of that type (a class absent
    from the reference says nothing about how well it is delineated; its false positives
    show in the volume difference)."""
    from volseg.quantify import CONSOLIDATION, GGO, voxel_volume_ml

    voxel_ml = voxel_volume_ml(spacing_mm)
    out: dict[str, float] = {}
    for name, code in (("ggo", GGO), ("consolidation", CONSOLIDATION)):
        pred, ref = np.asarray(pred_types) == code, np.asarray(ref_types) == code
        n_pred, n_ref = int(pred.sum()), int(ref.sum())
        overlap = int(np.logical_and(pred, ref).sum())
        out[f"{name}_dice"] = 2.0 * overlap / (n_pred + n_ref) if n_ref else float("nan")
        out[f"{name}_volume_diff_ml"] = (n_pred - n_ref) * voxel_ml
    return out
