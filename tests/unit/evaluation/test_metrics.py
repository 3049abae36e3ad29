"""Metrics against hand-counted cases, MONAI, and the empty-mask conventions."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from volseg.evaluation.lesions import lesion_detection
from volseg.evaluation.metrics import (
    case_metrics,
    overlap_metrics,
    surface_metrics,
    volume_metrics,
)
from volseg.evaluation.stats import (
    bootstrap_ci,
    describe,
    grade_confusion,
    stratify,
    summarize,
)


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


# Cases added from mutation testing (docs/mutation.md): each pins a value or a branch that
# the tests above left free.


def test_overlap_with_single_voxel_counts() -> None:
    """A one-voxel hit: TP 1 over TP + FN = 1 is sensitivity 1.0, not undefined. Prediction
    3 voxels, reference 2, sharing 1: TP 1, FP 2, FN 1, so Dice 2/(2+2+1), IoU 1/4."""
    one = _vol((2, 2, 2))
    one[0, 0, 0] = True
    m = overlap_metrics(one, one)
    assert (m["sensitivity"], m["precision"], m["dice"]) == (1.0, 1.0, 1.0)
    pred, ref = _vol(), _vol()
    pred[0, 0, 0:3] = True
    ref[0, 0, 2:4] = True
    m = overlap_metrics(pred, ref)
    assert m["dice"] == pytest.approx(0.4)
    assert m["iou"] == pytest.approx(0.25)


def test_hd95_is_the_95th_percentile_not_the_maximum() -> None:
    """Reference: a 20-voxel line; prediction: the line plus one voxel 10 mm past its end.
    The 21 prediction surface distances are twenty 0 mm and one 10 mm: the 95th
    percentile is 0 mm (the 96th would be 2 mm, the maximum 10 mm); all 20 reference
    points lie on the prediction, so the symmetric HD95 is 0 mm."""
    ref = _vol((30, 3, 3))
    ref[0:20, 1, 1] = True
    pred = ref.copy()
    pred[29, 1, 1] = True
    s = surface_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert s["hd95_mm"] == pytest.approx(0.0, abs=1e-6)


def test_surface_metrics_of_masks_at_the_volume_corner() -> None:
    """Voxels at index 0 on every axis are kept: single voxels 2 mm apart give HD95 2 mm."""
    a, b = _vol((5, 5, 5)), _vol((5, 5, 5))
    a[0, 0, 0] = True
    b[2, 0, 0] = True
    s = surface_metrics(a, b, (1.0, 1.0, 1.0))
    assert s["hd95_mm"] == pytest.approx(2.0)
    assert s["nsd"] == pytest.approx(1.0)


def test_nsd_tolerance_defaults_to_2_mm_and_is_passed_through() -> None:
    """Single voxels 2.5 mm apart: outside the default 2 mm tolerance (NSD 0), inside 3 mm."""
    a, b = _vol(), _vol()
    a[1, 1, 1] = True
    b[2, 1, 1] = True
    spacing = (2.5, 1.0, 1.0)
    assert surface_metrics(a, b, spacing)["nsd"] == 0.0
    assert case_metrics(a, b, spacing)["nsd"] == 0.0
    assert case_metrics(a, b, spacing, nsd_tolerance_mm=3.0)["nsd"] == pytest.approx(1.0)


def test_one_empty_mask_follows_the_conventions_without_warnings() -> None:
    """Exactly one mask empty: HD95 NaN, NSD 0, decided before MONAI (which would warn)."""
    empty, one = _vol(), _vol()
    one[1, 1, 1] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pred, ref in ((one, empty), (empty, one)):
            s = surface_metrics(pred, ref, (1.0, 1.0, 1.0))
            assert math.isnan(s["hd95_mm"]) and s["nsd"] == 0.0


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^expected 3D masks, got shape \(4, 4\)$"):
        case_metrics(np.zeros((4, 4), bool), np.zeros((4, 4), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match=r"lungs \(4, 4, 5\) vs reference \(4, 4, 4\)$"):
        case_metrics(_vol(), _vol(), (1.0, 1.0, 1.0), lungs=_vol((4, 4, 5)))
    with pytest.raises(ValueError, match=r"^spacing \(1\.0, 1\.0\) does not match 3D masks$"):
        surface_metrics(_vol(), _vol(), (1.0, 1.0))


def test_volume_metrics_every_key_by_hand() -> None:
    """0.01 mL voxels. Without lungs: an empty prediction against 8 reference voxels is
    0 mL vs 0.08 mL, 100 % relative error, involvement undefined. With 40 lung voxels:
    12 predicted vs 8 reference voxels is 30 % vs 20 % involvement (0.4 mL of lung)."""
    spacing = (2.0, 2.0, 2.5)
    lungs, ref, pred = _vol((5, 4, 2)), _vol((5, 4, 2)), _vol((5, 4, 2))
    lungs[:] = True
    ref.flat[:8] = True
    out = volume_metrics(np.zeros_like(ref), ref, spacing)
    assert set(out) == {
        "pred_volume_ml",
        "ref_volume_ml",
        "volume_diff_ml",
        "abs_volume_error_ml",
        "rel_volume_error_pct",
        "lung_volume_ml",
        "pred_involvement_pct",
        "ref_involvement_pct",
        "involvement_error_pct",
        "abs_involvement_error_pct",
        "pred_grade",
        "ref_grade",
    }
    assert out["pred_volume_ml"] == 0.0
    assert out["ref_volume_ml"] == pytest.approx(0.08)
    assert out["volume_diff_ml"] == pytest.approx(-0.08)
    assert out["abs_volume_error_ml"] == pytest.approx(0.08)
    assert out["rel_volume_error_pct"] == pytest.approx(100.0)
    undefined = [k for k in out if "involvement" in k or k == "lung_volume_ml"]
    assert all(math.isnan(out[k]) for k in undefined)
    assert out["pred_grade"] is None and out["ref_grade"] is None

    pred.flat[:12] = True
    out = volume_metrics(pred, ref, spacing, lungs)
    assert out["lung_volume_ml"] == pytest.approx(0.4)
    assert out["pred_involvement_pct"] == pytest.approx(30.0)
    assert out["ref_involvement_pct"] == pytest.approx(20.0)
    assert out["involvement_error_pct"] == pytest.approx(10.0)
    assert out["abs_involvement_error_pct"] == pytest.approx(10.0)
    assert (out["pred_grade"], out["ref_grade"]) == (2, 1)
    out = volume_metrics(ref, pred, spacing, lungs)  # swapped: the error is negative
    assert out["involvement_error_pct"] == pytest.approx(-10.0)
    assert out["abs_involvement_error_pct"] == pytest.approx(10.0)

    no_lung = volume_metrics(pred, ref, spacing, np.zeros_like(lungs))  # an empty lung mask
    assert math.isnan(no_lung["ref_involvement_pct"]) and no_lung["ref_grade"] is None


def test_bootstrap_ci_of_two_values_and_of_one_resample() -> None:
    """Constant data: every resample mean is the value, so the interval is a point."""
    assert bootstrap_ci([2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_ci([1.0, 1.0, 1.0], n_resamples=1) == (1.0, 1.0)


def test_bootstrap_ci_has_the_width_of_a_50_percent_interval() -> None:
    """confidence=0.5: mean ± 0.674 SE to within 10 % (a 67 % interval, ±0.97 SE, fails)."""
    values = np.random.default_rng(3).normal(0.0, 1.0, size=400)
    lo, hi = bootstrap_ci(values, 4000, seed=0, confidence=0.5)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert (hi - lo) / 2 == pytest.approx(0.674 * se, rel=0.1)


def test_describe_every_key_by_hand() -> None:
    """[1, 3]: mean 2, sd sqrt(2) (ddof 1), median 2; one value has no sd; none, no
    statistics at all, and neither asks numpy for the statistics of too few values."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = describe([1.0, None, 3.0], n_resamples=0)
        one = describe([5.0], n_resamples=100)
        none = describe([None, float("nan")], n_resamples=100)
    assert set(two) == {"n", "n_missing", "mean", "sd", "median", "min", "max", "ci95"}
    assert (two["n"], two["n_missing"], two["ci95"]) == (2, 1, None)
    assert two["mean"] == 2.0 and two["median"] == 2.0
    assert two["sd"] == pytest.approx(math.sqrt(2.0))
    assert (two["min"], two["max"]) == (1.0, 3.0)
    assert (one["mean"], one["min"], one["max"], one["ci95"]) == (5.0, 5.0, 5.0, None)
    assert math.isnan(one["sd"])
    assert (none["n"], none["n_missing"], none["ci95"]) == (0, 2, None)
    assert all(math.isnan(none[k]) for k in ("mean", "sd", "median", "min", "max"))


def test_the_seed_reaches_every_summary() -> None:
    """Same seed, same interval; another seed, another interval: in describe, summarize and
    stratify (whose single bin [0, 100] is allowed)."""
    values = [0.1, 0.5, 0.2, 0.9, 0.4, 0.7]
    rows = [
        {"case_id": str(i), "ref_involvement_pct": 10.0 * i, "x": v} for i, v in enumerate(values)
    ]

    def stratum_ci(seed: int) -> list[float] | None:
        (stratum,) = stratify(rows, ["x"], (0, 100), n_resamples=200, seed=seed)
        return stratum["metrics"]["x"]["ci95"]

    intervals = {
        "describe": lambda seed: describe(values, 200, seed)["ci95"],
        "summarize": lambda seed: summarize(rows, ["x"], 200, seed)["x"]["ci95"],
        "stratify": stratum_ci,
    }
    for name, ci in intervals.items():
        assert ci(0) is not None, name
        assert ci(0) == ci(0) and ci(1) == ci(1), name
        assert ci(0) != ci(1), name


def test_stratify_labels_bins_and_skips_missing_values() -> None:
    """Cases without the key (None, NaN) fall in no bin, wherever they come in the list."""
    rows = [
        {"case_id": "none", "ref_involvement_pct": None},
        {"case_id": "nan", "ref_involvement_pct": float("nan")},
        {"case_id": "a", "ref_involvement_pct": 5.0},
        {"case_id": "b", "ref_involvement_pct": 25.0},
        {"case_id": "c", "ref_involvement_pct": 100.0},
    ]
    strata = stratify(rows, [], (0, 25, 100), n_resamples=0)
    assert [(s["bin"], s["low"], s["high"], s["n_cases"], s["cases"]) for s in strata] == [
        ("[0, 25)", 0.0, 25.0, 1, ["a"]),
        ("[25, 100]", 25.0, 100.0, 2, ["b", "c"]),
    ]
    with pytest.raises(ValueError, match=r"increasing edges, got \(0, 25, 25, 100\)$"):
        stratify(rows, [], (0, 25, 25, 100))


def test_grade_confusion_counts_only_cases_with_both_grades() -> None:
    rows = [
        {"ref_grade": 2, "pred_grade": None},
        {"ref_grade": None, "pred_grade": 1},
        {"ref_grade": 1, "pred_grade": 1},
        {"ref_grade": 3, "pred_grade": 1},
    ]
    conf = grade_confusion(rows)
    assert conf["n"] == 2
    assert json.dumps(conf["matrix"]) == json.dumps(
        [[0] * 5, [0, 1, 0, 0, 0], [0] * 5, [0, 1, 0, 0, 0], [0] * 5]
    )  # integer counts in the report
    assert (conf["accuracy"], conf["within_one_accuracy"]) == (0.5, 0.5)
    empty = grade_confusion([])
    assert empty["n"] == 0
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["within_one_accuracy"])
