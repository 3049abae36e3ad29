"""The ``needs_review`` threshold, chosen on labeled validation scans.

Predict flags a scan for review when its ``uncertainty_score`` (the eight flipped
predictions' disagreement on the lesion, :func:`volseg.inference.predictor.flip_disagreement`)
reaches a threshold. Fine-tuning can choose that threshold on the labeled validation scans:
each is predicted as ``predict --uncertainty`` does (same predictor, same settings, the
gate included), which gives its score and the Dice of the mask predict would write, and
:func:`choose_review_threshold` picks the score that best separates the scans below a Dice
floor from the others. The choice and the number of scans it rests on go into the model
bundle; predict records in each JSON whether its threshold came from there
(``"validation"``) or from the settings (``"config"``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from volseg.evaluation.metrics import overlap_metrics
from volseg.inference.predictor import Predictor

log = logging.getLogger(__name__)

AUTO_MAX_SCANS = 16
"""``finetune.calibrate_review`` unset: calibrate only up to this many labeled validation
scans (each costs eight sliding-window passes once, after training)."""


@dataclass(frozen=True)
class ReviewCase:
    """One labeled validation scan as the review flag sees it."""

    id: str
    score: float
    """Its ``uncertainty_score``."""
    dice: float
    """Dice of the mask predict writes for it (gate included) against its reference."""


@dataclass(frozen=True)
class ReviewChoice:
    """A threshold and how it does on the scans it was chosen on."""

    threshold: float
    n_scans: int
    n_below_floor: int
    caught: int
    """Scans below the Dice floor that the threshold flags."""
    false_flags: int
    """Scans at or above the floor that it flags."""


def review_cases(predictor: Predictor, cases: Sequence[Any]) -> list[ReviewCase]:
    """Score and Dice of each :class:`volseg.inference.validation.ScanCase`, predicted
    with all eight flips as ``predict --uncertainty`` does."""
    flips = predictor.with_options(dataclasses.replace(predictor.options, uncertainty=True))
    out = []
    for case in cases:
        image, affine, lungs, ref = case.read()
        result = flips.predict(image, affine, lungs)
        dice = float(overlap_metrics(result.mask > 0, ref)["dice"])
        out.append(ReviewCase(case.id, float(result.disagreement or 0.0), dice))
    return out


def choose_review_threshold(cases: Sequence[ReviewCase], dice_floor: float) -> ReviewChoice | None:
    """The score threshold that flags the scans with Dice below ``dice_floor`` with the
    fewest errors (missed + false flags); among equals, the one that misses fewest.

    Not "flag every low-Dice scan": a scan the network left empty scores 0 (no flip finds
    a lesion), and catching it would flag every scan. The threshold sits halfway between
    the highest unflagged and the lowest flagged score (above all of them when none is
    flagged). None when no scan lies below the floor: there is nothing to separate.
    """
    if not any(c.dice < dice_floor for c in cases):
        return None
    scores = sorted({c.score for c in cases})
    candidates = [scores[0] / 2.0]
    candidates += [(low + high) / 2.0 for low, high in zip(scores, scores[1:], strict=False)]
    candidates.append(min(1.0, (scores[-1] + 1.0) / 2.0))

    def outcome(threshold: float) -> tuple[int, int]:
        missed = sum(c.score < threshold and c.dice < dice_floor for c in cases)
        false = sum(c.score >= threshold and c.dice >= dice_floor for c in cases)
        return missed, false

    best = min(candidates, key=lambda t: (sum(outcome(t)), outcome(t)[0]))
    missed, false = outcome(best)
    below = sum(c.dice < dice_floor for c in cases)
    return ReviewChoice(best, len(cases), below, below - missed, false)


def review_provenance(
    bundle: Any, overrides: Mapping[str, Any], threshold: float
) -> dict[str, Any]:
    """Where predict's review threshold came from, for each JSON: ``"validation"`` when the
    bundle's (chosen by fine-tuning, with the number of scans) is in force, ``"config"``
    when the user set one or the bundle holds the settings' value."""
    record = (bundle.extra or {}).get("review") or {}
    from_bundle = overrides.get("review_disagreement") is None
    if from_bundle and record.get("source") == "validation":
        return {
            "review_threshold": threshold,
            "review_threshold_source": "validation",
            "review_threshold_n": record.get("n_scans"),
        }
    return {
        "review_threshold": threshold,
        "review_threshold_source": "config",
        "review_threshold_n": None,
    }
