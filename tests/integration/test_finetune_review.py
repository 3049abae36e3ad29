"""The finetune stage chooses predict's needs_review threshold on the labeled validation
scans (never a test scan), stores it in the bundle with the n it rests on, and predict uses
it; with too few validation scans the settings' value stays, with the reason recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_finetune_stage import _config, _run_copy, prepared_run  # noqa: F401
from volseg.bundle import load_bundle
from volseg.data.mosmed import Datalist
from volseg.inference import review as review_mod
from volseg.inference.review import ReviewCase, choose_review_threshold
from volseg.rundir import datalist_path
from volseg.stages.finetune import run_finetune
from volseg.stages.predict import run_predict


def test_review_threshold_is_chosen_on_validation_and_used_by_predict(
    prepared_run: Path,  # noqa: F811
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _run_copy(prepared_run, tmp_path / "run")
    dl = Datalist.load(datalist_path(run))
    val_ids = [s.id for s in dl.labeled("val")]
    test_ids = {s.id for s in dl.studies_in("test")}
    seen: list[str] = []
    real = review_mod.review_cases

    def spy(predictor, cases):
        seen.extend(c.id for c in cases)
        return real(predictor, cases)

    monkeypatch.setattr("volseg.stages.finetune_review.review_cases", spy)
    cfg = _config(
        run,
        tiny_dataset,
        "finetune.calibrate_review=true",
        f"finetune.review_min_scans={len(val_ids)}",
        "finetune.review_dice_floor=1.0",  # every tiny-model scan is one to review
    )
    bundle_path = run_finetune(cfg)
    assert seen == val_ids and not test_ids & set(seen)
    record = json.loads((run / "finetune" / "summary.json").read_text())["review"]
    assert record["source"] == "validation" and record["n_scans"] == len(val_ids)
    cases = [ReviewCase(**c) for c in record["cases"]]
    assert [c.id for c in cases] == val_ids
    choice = choose_review_threshold(cases, 1.0)
    assert choice is not None and record["threshold"] == choice.threshold
    bundle = load_bundle(bundle_path)
    assert bundle.predict_defaults["review_disagreement"] == choice.threshold
    assert (
        bundle.extra["review"]["source"] == "validation" and "cases" not in bundle.extra["review"]
    )

    study = dl.studies[sorted(test_ids)[0]]
    out = tmp_path / "pred"
    run_predict(run, [study.image], out, use_lungs=False, uncertainty=True)
    info = json.loads((out / f"{study.id}.json").read_text())
    assert info["review_threshold"] == choice.threshold
    assert info["review_threshold_source"] == "validation"
    assert info["review_threshold_n"] == len(val_ids)
    assert info["needs_review"] == (info["uncertainty_score"] >= choice.threshold)


def test_too_few_validation_scans_keep_the_config_value(
    prepared_run: Path,  # noqa: F811
    tiny_dataset: Path,
    tmp_path: Path,
) -> None:
    run = _run_copy(prepared_run, tmp_path / "run")
    n_val = len(Datalist.load(datalist_path(run)).labeled("val"))
    cfg = _config(run, tiny_dataset, "finetune.epochs=1", f"finetune.review_min_scans={n_val + 1}")
    bundle = load_bundle(run_finetune(cfg))
    record = bundle.extra["review"]
    assert record["source"] == "config" and record["threshold"] == 0.5
    assert f"fewer than finetune.review_min_scans ({n_val + 1})" in record["reason"]
    assert bundle.predict_defaults["review_disagreement"] is None  # predict: 0.5, "config"
