"""Threshold choice for pseudo-masks on hand-made residual maps."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.pseudo.threshold import (
    binarize,
    calibrate_threshold,
    candidate_thresholds,
    dice,
    healthy_threshold,
)

SPACING = (1.0, 1.0, 1.0)


def _scan(seed: int, shape=(24, 24, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A residual map: background noise in [0, 0.2), a 6x6x4 lesion at 0.6..0.8."""
    rng = np.random.default_rng(seed)
    residual = rng.uniform(0.0, 0.2, size=shape).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    x0, y0 = rng.integers(2, 14, size=2)
    mask[x0 : x0 + 6, y0 : y0 + 6, 4:8] = True
    residual[mask] = rng.uniform(0.6, 0.8, size=int(mask.sum()))
    return residual, mask


def test_dice_hand_computed() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True
    assert dice(a, b) == 0.0
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(2 * 1 / 4)


def test_binarize_drops_small_components() -> None:
    residual = np.zeros((10, 10, 10), np.float32)
    residual[1:4, 1:4, 1:4] = 1.0  # 27 mm3
    residual[8, 8, 8] = 1.0  # 1 mm3 speck
    out = binarize(residual, 0.5, SPACING, min_component_mm3=5.0)
    assert out.sum() == 27 and not out[8, 8, 8]
    assert binarize(residual, 0.5, SPACING, 0.0).sum() == 28
    # a zero threshold never marks voxels without residual
    assert binarize(residual, 0.0, SPACING).sum() == 28


def test_calibration_picks_threshold_between_noise_and_lesion() -> None:
    scans = [_scan(s) for s in range(3)]
    cal = calibrate_threshold(
        [r for r, _ in scans], [m for _, m in scans], [SPACING] * 3, min_component_mm3=0.0
    )
    assert 0.2 <= cal.threshold <= 0.6
    assert cal.score == pytest.approx(1.0)
    assert len(cal.candidates) == len(cal.scores)


def test_calibration_on_explicit_grid_is_the_dice_argmax() -> None:
    residual, mask = _scan(7)
    grid = [0.05, 0.1, 0.15, 0.5, 0.7, 0.9]
    cal = calibrate_threshold([residual], [mask], [SPACING], candidates=grid)
    assert cal.threshold == 0.5
    # too low: noise included; too high: lesion partly or fully lost
    expected = [dice(binarize(residual, t, SPACING), mask) for t in grid]
    assert cal.scores == pytest.approx(expected)
    assert max(expected) == expected[3]


def test_calibration_rejects_mismatched_inputs() -> None:
    residual, mask = _scan(0)
    with pytest.raises(ValueError):
        calibrate_threshold([residual], [], [SPACING])
    with pytest.raises(ValueError):
        calibrate_threshold([residual], [mask], [SPACING], candidates=[0.0, 0.5])


def test_candidates_are_increasing_positive_quantiles() -> None:
    residual, _ = _scan(1)
    grid = candidate_thresholds([residual], n=10)
    assert np.all(np.diff(grid) > 0) and grid[0] > 0
    assert grid[-1] <= residual.max()
    assert candidate_thresholds([np.zeros((3, 3, 3))]).tolist() == [pytest.approx(1e-6)]


def test_healthy_threshold_is_in_lung_percentile() -> None:
    residual = np.arange(1000, dtype=np.float32).reshape(10, 10, 10) / 1000.0
    lungs = np.zeros_like(residual, dtype=bool)
    lungs[:5] = True  # values 0.000 .. 0.499
    residual[5:] = 100.0  # outside the lungs: must be ignored
    t = healthy_threshold([residual], [lungs], percentile=99.0)
    assert t == pytest.approx(np.percentile(np.arange(500) / 1000.0, 99.0), rel=1e-5)


def test_calibration_scores_equal_whole_volume_dice_with_lesion_outside_the_residual() -> None:
    """Components are labelled in the residual's support box only; the scores must still be
    the whole-volume Dice, counting reference voxels outside that box (here 4 of them)."""
    from volseg.pseudo.threshold import binarize, calibrate_threshold, dice

    residual = np.zeros((20, 16, 8), np.float32)
    residual[5:12, 4:10, 2:6] = np.linspace(0.1, 1.0, 7 * 6 * 4).reshape(7, 6, 4)
    residual[14, 12, 7] = 0.9  # a one-voxel speck, removed at 2 mm3
    ref = np.zeros(residual.shape, bool)
    ref[8:12, 6:10, 3:6] = True
    ref[0, 0, 0:4] = True  # reference voxels where the residual is zero
    cal = calibrate_threshold([residual], [ref], [(1.0, 1.0, 1.0)], 2.0)
    expected = [dice(binarize(residual, t, (1.0, 1.0, 1.0), 2.0), ref) for t in cal.candidates]
    assert cal.scores == pytest.approx(expected, abs=1e-12)
    empty = calibrate_threshold([np.zeros_like(residual)], [ref], [(1.0,) * 3], 2.0)
    assert empty.score == 0.0
