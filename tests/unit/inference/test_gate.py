"""The lesion-presence gate chosen on validation scans (hand-computed cases)."""

from __future__ import annotations

import math

import pytest

from volseg.inference.validation import GateCase, choose_involvement_gate


def test_gated_dice_follows_the_empty_mask_convention() -> None:
    healthy = GateCase("h", 0.8, 0.0, True)
    lesion = GateCase("l", 3.0, 0.7, False)
    assert healthy.gated_dice(1.0) == 1.0  # emptied: both masks empty
    assert healthy.gated_dice(0.5) == 0.0  # kept: false positives only
    assert lesion.gated_dice(1.0) == 0.7
    assert lesion.gated_dice(5.0) == 0.0  # emptied: every lesion missed


def test_separable_cases_give_the_geometric_midpoint() -> None:
    cases = [
        GateCase("h1", 0.5, 0.0, True),
        GateCase("h2", 0.8, 0.0, True),
        GateCase("l1", 3.2, 0.7, False),
        GateCase("l2", 9.0, 0.8, False),
    ]
    assert choose_involvement_gate(cases) == pytest.approx(math.sqrt(0.8 * 3.2))  # 1.6


def test_overlapping_cases_maximise_mean_dice_with_the_smallest_gate() -> None:
    # the lesion scan at 0.6 % scores 0.9 if kept; gating it away loses more than the
    # healthy scan at 1.0 % gains, so the best gate sits just above the healthy scan at 0.2 %
    cases = [
        GateCase("h1", 0.2, 0.0, True),
        GateCase("l1", 0.6, 0.9, False),
        GateCase("h2", 1.0, 0.0, True),
        GateCase("l2", 4.0, 0.8, False),
    ]
    # candidates: 0, sqrt(.2*.6), sqrt(.6*1), sqrt(1*4)=2 -> mean Dice 0.425, 0.675, 0.45, 0.7
    assert choose_involvement_gate(cases) == pytest.approx(2.0)
    cases[1] = GateCase("l1", 0.6, 0.95, False)  # 0.6875 with gate sqrt(.12) vs 0.7 at 2
    assert choose_involvement_gate(cases) == pytest.approx(2.0)
    cases[1] = GateCase("l1", 0.6, 1.0, False)  # 0.7 both: the smaller gate wins the tie
    assert choose_involvement_gate(cases) == pytest.approx(math.sqrt(0.2 * 0.6))


def test_no_false_positives_needs_no_gate() -> None:
    cases = [GateCase("h", 0.0, 1.0, True), GateCase("l", 2.0, 0.6, False)]
    # a healthy scan predicted empty already scores 1, so the candidate gate 1 % ties with
    # no gate; the smaller (0: no gate) wins
    assert choose_involvement_gate(cases) == 0.0
    assert choose_involvement_gate([]) == 0.0
