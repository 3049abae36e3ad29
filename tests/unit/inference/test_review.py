"""The needs_review threshold chosen on validation (hand-made score/Dice pairs) and the
provenance predict records beside needs_review."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from tests.oracle import OracleNet
from volseg.bundle import save_bundle
from volseg.inference.review import ReviewCase, choose_review_threshold, review_provenance
from volseg.models import registry
from volseg.recipe import Recipe
from volseg.stages.predict import run_predict


def _cases(*pairs: tuple[float, float]) -> list[ReviewCase]:
    return [ReviewCase(f"s{i}", score, dice) for i, (score, dice) in enumerate(pairs)]


def test_separable_scores_flag_every_low_dice_scan_and_nothing_else() -> None:
    cases = _cases((0.1, 0.8), (0.2, 0.7), (0.3, 0.9), (0.6, 0.3), (0.8, 0.1))
    choice = choose_review_threshold(cases, dice_floor=0.5)
    assert choice is not None
    assert choice.threshold == pytest.approx(0.45)  # halfway between 0.3 and 0.6
    assert (choice.n_scans, choice.n_below_floor, choice.caught, choice.false_flags) == (5, 2, 2, 0)


def test_an_empty_prediction_does_not_force_flagging_every_scan() -> None:
    # s0: the network found nothing (score 0, Dice 0); catching it would flag all five
    cases = _cases((0.0, 0.0), (0.7, 0.2), (0.2, 0.8), (0.3, 0.9), (0.4, 0.6))
    choice = choose_review_threshold(cases, dice_floor=0.5)
    # thresholds 0 / 0.1 / 0.25 / 0.35 / 0.55 / 0.85: errors 3, 4, 3, 2, 1, 2
    assert choice is not None and choice.threshold == pytest.approx(0.55)
    assert (choice.caught, choice.false_flags) == (1, 0)


def test_equal_errors_prefer_the_threshold_that_misses_fewer() -> None:
    cases = _cases((0.5, 0.3), (0.6, 0.9), (0.2, 0.8))
    # 0.35 flags 0.5 and 0.6 (a false flag); 0.8 flags nothing (a miss): one error each
    choice = choose_review_threshold(cases, dice_floor=0.5)
    assert choice is not None and choice.threshold == pytest.approx(0.35)
    assert (choice.caught, choice.false_flags) == (1, 1)


def test_all_low_dice_flags_all_and_none_low_gives_no_choice() -> None:
    choice = choose_review_threshold(_cases((0.4, 0.1), (0.6, 0.2)), dice_floor=0.5)
    assert choice is not None and choice.threshold == pytest.approx(0.2)  # below both
    assert choice.caught == 2
    assert choice_none(_cases((0.4, 0.9), (0.6, 0.7)))
    # the floor is strict: a scan exactly at it is good
    assert choice_none(_cases((0.4, 0.5)))


def choice_none(cases: list[ReviewCase]) -> bool:
    return choose_review_threshold(cases, dice_floor=0.5) is None


def test_provenance_follows_the_bundle_unless_the_user_sets_one() -> None:
    chosen = SimpleNamespace(extra={"review": {"source": "validation", "n_scans": 6}})
    assert review_provenance(chosen, {"review_disagreement": None}, 0.31) == {
        "review_threshold": 0.31,
        "review_threshold_source": "validation",
        "review_threshold_n": 6,
    }
    user = review_provenance(chosen, {"review_disagreement": 0.5}, 0.5)
    assert user["review_threshold_source"] == "config" and user["review_threshold_n"] is None
    old = review_provenance(SimpleNamespace(extra={}), {}, 0.5)
    assert old["review_threshold_source"] == "config"


def _bundle(path: Path, threshold: float | None, record: dict | None) -> Path:
    defaults = {"overlap": 0.25, "min_component_mm3": 0}
    if threshold is not None:
        defaults["review_disagreement"] = threshold
    return save_bundle(
        path,
        OracleNet(),
        "oracle",
        {"level": 0.6},
        Recipe((1.5, 1.5, 5.0), (-1000, 400), (16, 16, 8)),
        defaults,
        extra={} if record is None else {"review": record},
    )


def test_predict_records_which_threshold_it_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oracle's flips agree (score 0): a threshold of 0 flags the scan, 0.5 does not."""
    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    hu = np.full((40, 40, 10), -850, dtype=np.int16)
    hu[10:16, 10:16, 3:7] = 200
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 5.0, 1.0])), src)
    chosen = _bundle(tmp_path / "chosen.pt", 0.0, {"source": "validation", "n_scans": 5})
    plain = _bundle(tmp_path / "plain.pt", None, None)

    def info(bundle: Path, name: str, **kwargs) -> dict:
        run_predict(bundle, src, tmp_path / name, use_lungs=False, uncertainty=True, **kwargs)
        return json.loads((tmp_path / name / "scan_a.json").read_text())

    got = info(chosen, "chosen")
    assert got["uncertainty_score"] == 0.0 and got["needs_review"] is True
    assert (got["review_threshold"], got["review_threshold_source"]) == (0.0, "validation")
    assert got["review_threshold_n"] == 5
    got = info(chosen, "user", review_disagreement=0.5)  # the user's value wins
    assert got["needs_review"] is False
    assert (got["review_threshold"], got["review_threshold_source"]) == (0.5, "config")
    got = info(plain, "plain")  # a bundle without a chosen threshold: the default 0.5
    assert (got["review_threshold"], got["review_threshold_source"]) == (0.5, "config")
    assert got["review_threshold_n"] is None
    run_predict(plain, src, tmp_path / "off", use_lungs=False)  # no --uncertainty: no flag
    off = json.loads((tmp_path / "off" / "scan_a.json").read_text())
    assert "needs_review" not in off and "review_threshold" not in off
