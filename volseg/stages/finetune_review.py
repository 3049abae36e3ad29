"""``finetune.calibrate_review``: predict's ``needs_review`` threshold chosen on the labeled
validation scans (:mod:`volseg.inference.review`), or why the settings' value stays.

Cost: eight sliding-window passes per labeled validation scan, once after training (a
validation pass is one per scan); so without ``calibrate_review: true`` it runs only for
at most :data:`volseg.inference.review.AUTO_MAX_SCANS` scans. Test scans are never read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from volseg.inference.predictor import DEFAULT_REVIEW_DISAGREEMENT, Predictor
from volseg.inference.review import AUTO_MAX_SCANS, choose_review_threshold, review_cases

log = logging.getLogger(__name__)


def _skip_reason(ft: Any, n: int) -> str | None:
    if ft.calibrate_review is False:
        return "finetune.calibrate_review is false"
    if n < ft.review_min_scans:
        return (
            f"{n} labeled validation scan(s), fewer than finetune.review_min_scans "
            f"({ft.review_min_scans})"
        )
    if ft.calibrate_review is None and n > AUTO_MAX_SCANS:
        return (
            f"{n} labeled validation scans, more than {AUTO_MAX_SCANS}: set "
            "finetune.calibrate_review: true to choose it on them (8 passes per scan)"
        )
    return None


def calibrate_review(
    cfg: Any, predictor: Predictor, studies: Sequence[Any], gate_pct: float | None = None
) -> dict[str, Any]:
    """The bundle's review record: ``source`` ("validation" or "config"), ``threshold``,
    ``n_scans`` and, when chosen, how it does on them (``cases`` for ``summary.json``).

    ``predictor``: the network with the run's predict settings; ``gate_pct``: the
    calibrated lesion-presence gate the bundle will hold; ``studies``: the labeled
    validation studies."""
    from volseg.inference.validation import ScanCase

    ft = cfg.finetune
    configured = cfg.predict.review_disagreement
    record: dict[str, Any] = {
        "source": "config",
        "threshold": DEFAULT_REVIEW_DISAGREEMENT if configured is None else configured,
        "n_scans": len(studies),
        "dice_floor": ft.review_dice_floor,
    }
    reason = _skip_reason(ft, len(studies))
    if reason is not None:
        log.info("finetune: review threshold %s from the settings: %s", record["threshold"], reason)
        return record | {"reason": reason}
    if gate_pct is not None:  # the masks predict will write
        predictor = predictor.with_options(
            dataclasses.replace(predictor.options, min_involvement_pct=gate_pct)
        )
    start = time.perf_counter()
    cases = review_cases(predictor, [ScanCase.of(s) for s in studies])
    seconds = round(time.perf_counter() - start, 1)
    listed = [dataclasses.asdict(c) for c in cases]
    choice = choose_review_threshold(cases, ft.review_dice_floor)
    if choice is None:
        reason = f"no labeled validation scan below Dice {ft.review_dice_floor:g}"
        log.info("finetune: review threshold %s from the settings: %s", record["threshold"], reason)
        return record | {"reason": reason, "seconds": seconds, "cases": listed}
    log.info(
        "finetune: review threshold %.4f chosen on %d labeled validation scans in %.1f s "
        "(%d of %d below Dice %g flagged, %d false flags)",
        choice.threshold,
        choice.n_scans,
        seconds,
        choice.caught,
        choice.n_below_floor,
        ft.review_dice_floor,
        choice.false_flags,
    )
    return record | {
        "source": "validation",
        "threshold": choice.threshold,
        "n_below_floor": choice.n_below_floor,
        "caught": choice.caught,
        "false_flags": choice.false_flags,
        "seconds": seconds,
        "cases": listed,
    }
