"""Metrics against hand-counted cases, MONAI, and the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from volseg.evaluation.lesions import lesion_detection
from volseg.evaluation.metrics import case_metrics, overlap_metrics, surface_metrics
from volseg.evaluation.stats import bootstrap_ci, describe, grade_confusion, stratify


def _vol(shape=(4, 4, 4)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def test_overlap_hand_counted() -> None:
    pred, ref = _vol(), _vol()
    pred[0, 0, 0:4] = True  # 4 voxels
    ref[0, 0, 2:4] = True  # 2 shared with pred
    ref[0, 1, 0:4] = True  # 4 more: ref = 6 voxels
    # TP 2, FP 2, FN 4, TN 64 - 8 = 56
    m = case_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 2, 4, 56)
    assert m["dice"] == pytest.approx(4 / 10)
    assert m["iou"] == pytest.approx(2 / 8)
    assert m["sensitivity"] == pytest.approx(2 / 6)
    assert m["specificity"] == pytest.approx(56 / 58)
    assert m["precision"] == pytest.approx(2 / 4)


def test_whole_volume_not_max_over_slices() -> None:
    """Slice 0 matches perfectly, slice 1 is a false positive, slice 2 is missed.

    A per-slice score maximised over slices (the seed code's mistake) gives 1.0; the
    whole-volume Dice is 2·1 / (2·1 + 1 + 1) = 0.5.
    """
    pred, ref = _vol((3, 3, 3)), _vol((3, 3, 3))
    pred[1, 1, 0] = ref[1, 1, 0] = True
    pred[1, 1, 1] = True
    ref[1, 1, 2] = True
    per_slice = [overlap_metrics(pred[..., k], ref[..., k])["dice"] for k in range(3)]
    assert max(per_slice) == 1.0  # the wrong aggregation would report this
    assert np.logical_or(pred, ref).any(axis=(0, 1)).all()
    m = case_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(0.5)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("b_index", "spacing", "expected_mm"),
    [
        ((3, 1, 1), (2.0, 1.0, 3.0), 4.0),
        ((1, 1, 3), (0.7, 0.7, 5.0), 10.0),
        ((2, 3, 1), (2.0, 1.0, 3.0), 2 * math.sqrt(2)),
    ],
)
def test_hd95_single_voxels_anisotropic(b_index, spacing, expected_mm) -> None:
    a, b = _vol((5, 5, 5)), _vol((5, 5, 5))
    a[1, 1, 1] = True
    b[b_index] = True
    s = surface_metrics(a, b, spacing, nsd_tolerance_mm=2.0)
    assert s["hd95_mm"] == pytest.approx(expected_mm, rel=1e-5)
    assert s["nsd"] == pytest.approx(1.0 if expected_mm <= 2.0 else 0.0)


def test_nsd_hand_computed() -> None:
    # ref: two voxels 5 mm apart; pred: the first one only. Boundary points: pred {p0} is
    # within tolerance; ref {p0 (0 mm), p5 (5 mm)} -> 1 of 2. NSD = (1 + 1) / (1 + 2).
    pred, ref = _vol((3, 3, 8)), _vol((3, 3, 8))
    pred[1, 1, 1] = ref[1, 1, 1] = True
    ref[1, 1, 6] = True
    assert surface_metrics(pred, ref, (1.0, 1.0, 1.0), 2.0)["nsd"] == pytest.approx(2 / 3)
    assert surface_metrics(pred, ref, (1.0, 1.0, 1.0), 5.0)["nsd"] == pytest.approx(1.0)
    # Same voxels, but 0.3 mm slices: the second voxel is 1.5 mm away, inside 2 mm.
    assert surface_metrics(pred, ref, (1.0, 1.0, 0.3), 2.0)["nsd"] == pytest.approx(1.0)


def test_surface_metrics_unchanged_by_cropping() -> None:
    rng = np.random.default_rng(3)
    pred = rng.random((12, 10, 8)) > 0.85
    ref = rng.random((12, 10, 8)) > 0.85
    pred[0, 0, 0] = True  # touches the border: cropping must keep edge detection identical
    small = surface_metrics(pred, ref, (0.8, 0.8, 2.5))
    padded = surface_metrics(
        np.pad(pred, 4)[4:, 4:, 4:], np.pad(ref, 4)[4:, 4:, 4:], (0.8, 0.8, 2.5)
    )  # extra empty space on the far side only
    assert small["hd95_mm"] == pytest.approx(padded["hd95_mm"])
    assert small["nsd"] == pytest.approx(padded["nsd"])


def test_dice_agrees_with_monai() -> None:
    import torch
    from monai.metrics import DiceMetric, MeanIoU

    rng = np.random.default_rng(0)
    for seed in range(3):
        pred = rng.random((9, 8, 7)) > 0.6
        ref = rng.random((9, 8, 7)) > 0.5 + 0.1 * seed
        ours = case_metrics(pred, ref, (1.0, 1.0, 2.0))
        tp = torch.from_numpy(pred)[None, None].float()
        tr = torch.from_numpy(ref)[None, None].float()
        dice = DiceMetric(include_background=True, reduction="none")(tp, tr)
        iou = MeanIoU(include_background=True, reduction="none")(tp, tr)
        assert ours["dice"] == pytest.approx(float(dice.item()), abs=1e-6)
        assert ours["iou"] == pytest.approx(float(iou.item()), abs=1e-6)


def test_empty_mask_conventions() -> None:
    empty, one = _vol(), _vol()
    one[1, 1, 1:3] = True
    both = case_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert both["dice"] == 1.0 and both["iou"] == 1.0
    assert math.isnan(both["sensitivity"]) and math.isnan(both["precision"])
    assert both["specificity"] == 1.0
    assert both["hd95_mm"] == 0.0 and both["nsd"] == 1.0
    assert both["lesion_f1"] == 1.0 and math.isnan(both["lesion_sensitivity"])

    missed = case_metrics(empty, one, (1.0, 1.0, 1.0))  # prediction empty
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0
    assert math.isnan(missed["precision"]) and math.isnan(missed["hd95_mm"])
    assert missed["nsd"] == 0.0 and missed["lesion_f1"] == 0.0

    spurious = case_metrics(one, empty, (1.0, 1.0, 1.0))  # reference empty
    assert spurious["dice"] == 0.0 and spurious["precision"] == 0.0
    assert math.isnan(spurious["sensitivity"]) and math.isnan(spurious["hd95_mm"])
    assert spurious["nsd"] == 0.0 and spurious["specificity"] == pytest.approx(62 / 64)
    assert math.isnan(spurious["rel_volume_error_pct"])


def test_lesion_detection_one_hit_one_missed_one_false_positive() -> None:
    ref, pred = _vol((12, 12, 6)), _vol((12, 12, 6))
    ref[1:4, 1:4, 1:3] = True  # lesion A
    ref[8:11, 8:11, 1:3] = True  # lesion B
    ref[5, 5, 4] = ref[6, 6, 5] = True  # lesion C: two voxels touching only at a corner
    pred[2, 2, 1] = True  # one voxel hits A
    pred[2, 9, 3:5] = True  # false-positive blob
    pred[6, 6, 5] = True  # hits C
    d = lesion_detection(pred, ref)
    assert d["n_ref_lesions"] == 3  # 26-connectivity joins C's corner-touching voxels
    assert d["n_pred_lesions"] == 3
    assert (d["n_detected"], d["n_missed"], d["n_false_pos"]) == (2, 1, 1)
    assert d["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert d["lesion_precision"] == pytest.approx(2 / 3)
    assert d["lesion_f1"] == pytest.approx(2 / 3)


def test_volume_involvement_and_grade() -> None:
    spacing = (2.0, 2.0, 2.5)  # 10 mm³ = 0.01 mL per voxel
    lungs, ref, pred = _vol((5, 4, 2)), _vol((5, 4, 2)), _vol((5, 4, 2))
    lungs[:] = True  # 40 voxels
    ref.flat[:8] = True  # 20 % -> CT-1
    pred.flat[:12] = True  # 30 % -> CT-2
    m = case_metrics(pred, ref, spacing, lungs=lungs)
    assert m["ref_volume_ml"] == pytest.approx(0.08)
    assert m["pred_volume_ml"] == pytest.approx(0.12)
    assert m["volume_diff_ml"] == pytest.approx(0.04)
    assert m["rel_volume_error_pct"] == pytest.approx(50.0)
    assert m["ref_involvement_pct"] == pytest.approx(20.0)
    assert m["involvement_error_pct"] == pytest.approx(10.0)
    assert (m["ref_grade"], m["pred_grade"]) == (1, 2)
    no_lungs = case_metrics(pred, ref, spacing)
    assert no_lungs["ref_grade"] is None and math.isnan(no_lungs["ref_involvement_pct"])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        case_metrics(_vol((4, 4, 4)), _vol((4, 4, 5)), (1.0, 1.0, 1.0))


def test_bootstrap_ci_contains_mean_and_is_seeded() -> None:
    values = np.random.default_rng(1).normal(0.6, 0.15, size=40)
    ci = bootstrap_ci(values, 500, seed=7)
    assert ci is not None and ci[0] < values.mean() < ci[1]
    assert bootstrap_ci(values, 500, seed=7) == ci
    assert bootstrap_ci(values, 500, seed=8) != ci
    assert bootstrap_ci(values, 0) is None and bootstrap_ci([0.5], 100) is None


def test_describe_excludes_and_counts_missing() -> None:
    d = describe([0.2, float("nan"), 0.4, None, 0.9], n_resamples=200, seed=0)
    assert (d["n"], d["n_missing"]) == (3, 2)
    assert d["mean"] == pytest.approx(0.5)
    assert d["median"] == pytest.approx(0.4)
    assert d["sd"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))


def test_stratify_and_confusion() -> None:
    rows = [
        {"case_id": "a", "ref_involvement_pct": 0.0, "dice": 0.1, "ref_grade": 0, "pred_grade": 0},
        {"case_id": "b", "ref_involvement_pct": 5.0, "dice": 0.5, "ref_grade": 1, "pred_grade": 2},
        {
            "case_id": "c",
            "ref_involvement_pct": 100.0,
            "dice": 0.9,
            "ref_grade": 4,
            "pred_grade": 4,
        },
        {"case_id": "d", "ref_involvement_pct": float("nan"), "dice": 0.3},
    ]
    strata = stratify(rows, ["dice"], (0, 5, 25, 50, 100), n_resamples=0)
    assert [s["cases"] for s in strata] == [["a"], ["b"], [], ["c"]]
    assert strata[1]["metrics"]["dice"]["mean"] == pytest.approx(0.5)
    conf = grade_confusion(rows)
    assert conf["n"] == 3 and conf["matrix"][1][2] == 1
    assert conf["accuracy"] == pytest.approx(2 / 3)
    assert conf["within_one_accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stratify(rows, ["dice"], (0, 50, 25))


def test_bootstrap_ci_has_the_width_of_a_95_percent_interval() -> None:
    """For 400 draws the percentile-bootstrap 95 % CI of the mean is mean ± 1.96 SE to
    within 10 %; a 50 % interval (±0.67 SE) would fail this."""
    values = np.random.default_rng(3).normal(0.0, 1.0, size=400)
    lo, hi = bootstrap_ci(values, 4000, seed=0)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.1)


@pytest.mark.parametrize(
    ("involvement", "grade"),
    [
        (0.0, 0),
        (0.01, 1),
        (24.99, 1),
        (25.0, 2),
        (49.99, 2),
        (50.0, 3),
        (74.99, 3),
        (75.0, 4),
        (100.0, 4),
    ],
)
def test_grade_bounds_are_mosmeds(involvement: float, grade: int) -> None:
    """MosMed's rule, pinned at every bound: CT-1 < 25 %, CT-2 25-50, CT-3 50-75, CT-4 >= 75."""
    from volseg.quantify import grade_from_involvement

    assert grade_from_involvement(involvement) == grade


def test_involvement_counts_only_lesion_inside_the_lungs() -> None:
    """quantify: 30 lesion voxels, 10 of them outside the 100 lung voxels -> 20 %, CT-1;
    the lesion volume counts all 30."""
    from volseg.quantify import quantify

    lungs = np.zeros((10, 10, 2), bool)
    lungs[:, :, 0] = True  # 100 voxels
    lesion = np.zeros_like(lungs)
    lesion[:2, :, 0] = True  # 20 inside
    lesion[:1, :, 1] = True  # 10 outside
    q = quantify(lesion, lungs, (1.0, 1.0, 10.0))
    assert q["involvement_pct"] == pytest.approx(20.0) and q["ct_grade"] == 1
    assert q["lesion_volume_ml"] == pytest.approx(0.3) and q["lung_volume_ml"] == pytest.approx(1.0)
