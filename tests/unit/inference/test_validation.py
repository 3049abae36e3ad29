"""Validation measures what predict + evaluate measure: the same Dice on the same scans."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import pytest

from tests.oracle import OracleNet
from volseg.bundle import load_bundle, save_bundle
from volseg.data.mosmed import discover
from volseg.inference.predictor import Predictor
from volseg.inference.validation import ScanCase, gate_cases, unlabeled_involvements, validate
from volseg.models import registry
from volseg.recipe import Recipe


def test_validation_dice_equals_predict_plus_evaluate_dice(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from volseg.stages.evaluate import run_evaluate
    from volseg.stages.predict import run_predict

    monkeypatch.setitem(registry.MODELS, "bright", OracleNet)
    recipe = Recipe((5.5, 5.5, 12.0), (-1000, 400), (32, 32, 16))
    path = save_bundle(
        tmp_path / "model.pt", OracleNet(0.55), "bright", {"level": 0.55}, recipe, {"overlap": 0.25}
    )
    bundle = load_bundle(path)
    studies = [s for s in discover(tiny_dataset) if s.mask is not None and s.lungs is not None]
    assert len(studies) >= 2
    cases = [ScanCase.of(s) for s in studies]
    val = validate(Predictor.from_bundle(bundle), cases)

    refs = tmp_path / "ref"
    refs.mkdir()
    for s in studies:
        shutil.copy(s.mask, refs / f"{s.id}_mask.nii.gz")
    lungs = Path(studies[0].lungs).parent
    out = tmp_path / "pred"
    run_predict(path, [s.image for s in studies], out, lungs=lungs, min_involvement_pct=0)
    report = run_evaluate(out, refs, tmp_path / "eval", lungs_dir=lungs, bootstrap=0)
    with open(report / "per_case.csv", newline="") as fh:
        evaluated = {row["case_id"]: float(row["dice"]) for row in csv.DictReader(fh)}
    assert set(evaluated) == set(val.cases)
    assert any(d > 0 for d in evaluated.values())
    for sid, dice in evaluated.items():
        assert val.cases[sid]["dice"] == pytest.approx(dice, abs=1e-6)

    # the gate's cases are the same ungated predictions
    gates = gate_cases(Predictor.from_bundle(bundle), cases)
    for g in gates:
        assert g.dice == pytest.approx(evaluated[g.id], abs=1e-6)
    # scans without a mask: the same involvement, measured without reading a reference
    unlabeled = [dataclasses.replace(c, reference=Path("missing.nii.gz")) for c in cases]
    involvement = unlabeled_involvements(Predictor.from_bundle(bundle), unlabeled)
    assert involvement == {g.id: pytest.approx(g.involvement_pct) for g in gates}
    assert any(v > 0 for v in involvement.values())
