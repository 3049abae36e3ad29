"""The study's painted-real-anatomy column: a cell's model predicts a painted set for real."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.chest_phantom import chest_phantom
from tests.oracle import OracleNet
from volseg.config import load_config
from volseg.models import registry
from volseg.pipeline.study_painted import check_painted_set, painted_result, score_painted
from volseg.recipe import Recipe


@pytest.fixture(scope="module")
def painted_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chest phantom, its own lesion removed, painted CT-1..CT-3 by `synth --paint`."""
    from volseg.data.paint import paint_dataset
    from volseg.io import write_nifti

    root = tmp_path_factory.mktemp("painted")
    hu, _, lesion = chest_phantom()
    hu[lesion] = -850.0
    (root / "healthy").mkdir()
    write_nifti(root / "healthy" / "chest.nii.gz", np.round(hu).astype(np.int16), AFFINE)
    return paint_dataset(root / "healthy", root / "set")


AFFINE = np.diag([-1.4, -1.4, 8.0, 1.0])


@pytest.fixture()
def cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A cell folder whose bundle marks voxels above -580 HU (ground glass and denser)."""
    from volseg.bundle import save_bundle

    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    run_dir = tmp_path / "cell"
    save_bundle(
        run_dir / "finetune" / "model.pt",
        OracleNet(0.3),  # windowed 0.3 of [-1000, 400] = -580 HU
        "oracle",
        {"level": 0.3},
        Recipe((2.8, 2.8, 8.0), (-1000, 400), (32, 32, 8)),
        {"overlap": 0.25, "min_component_mm3": 0},
    )
    (tmp_path / "data").mkdir()
    overrides = ["evaluate.bootstrap=0"]
    return load_config(None, overrides, data_root=tmp_path / "data", run_dir=run_dir)


def test_cell_model_predicts_and_scores_the_painted_set(painted_set, cell, monkeypatch) -> None:
    folder = score_painted(cell, check_painted_set(painted_set))
    assert folder == Path(cell.run_dir) / "painted"
    with (folder / "evaluate" / "per_case.csv").open() as fh:
        cases = {r["case_id"]: float(r["dice"]) for r in csv.DictReader(fh)}
    assert sorted(cases) == ["chest_ct1", "chest_ct2", "chest_ct3"]
    assert all(0.0 < d <= 1.0 for d in cases.values())  # bright painted lesions are found
    for sid in cases:
        report = json.loads((folder / "pred" / f"{sid}.json").read_text())
        assert report["gated"] is False  # no presence gate on the painted set
    result = painted_result(Path(cell.run_dir))
    assert result["painted_n"] == 3
    assert result["painted_dice_mean"] == pytest.approx(np.mean(list(cases.values())))

    def boom(*args, **kwargs):
        raise AssertionError("predicted again")

    monkeypatch.setattr("volseg.stages.predict.run_predict", boom)
    assert score_painted(cell, check_painted_set(painted_set)) == folder  # up to date
    leftovers = [p.name for p in Path(cell.run_dir).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_failed_rescore_keeps_the_previous_result(painted_set, cell, monkeypatch) -> None:
    folder = score_painted(cell, check_painted_set(painted_set))
    before = (folder / "evaluate" / "summary.json").read_text()
    (folder / "record.json").write_text("{}")  # as if the model had changed

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("volseg.stages.evaluate.run_evaluate", fail)
    with pytest.raises(RuntimeError):
        score_painted(cell, check_painted_set(painted_set))
    assert (folder / "evaluate" / "summary.json").read_text() == before
    assert [p.name for p in Path(cell.run_dir).iterdir() if p.name.startswith(".")] == []


def test_a_painted_result_of_an_older_model_does_not_count(painted_set, cell) -> None:
    """The cell retrained after its painted set was scored (a new fine-tuning run id, as a
    later study run without ``--painted`` leaves it): the old figures leave study.csv."""
    from volseg.pipeline import manifest as mf

    score_painted(cell, check_painted_set(painted_set))
    run_dir = Path(cell.run_dir)
    assert painted_result(run_dir)["painted_n"] == 3
    retrained = mf.Manifest("finetune", "done", "h", {}, {}, "i", run_id=mf.new_run_id())
    mf.write_manifest(run_dir, retrained)
    assert painted_result(run_dir) == {}
