"""`volseg prepare` end to end on a tiny MosMed-layout dataset (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.data.test_mosmed import make_mosmed
from volseg.cli import main
from volseg.data.cache import load_cache
from volseg.data.mosmed import SPLITS, Datalist
from volseg.rundir import datalist_path

PLAN = {"CT-0": 3, "CT-1": 6, "CT-2": 1}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_mosmed(root, PLAN, labeled=4, with_lungs=True, with_truth=True)
    return root


def _config(tmp_path: Path, lungs: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "data:\n"
        "  spacing: [7.5, 7.5, 10.0]\n"
        f"  lungs: {lungs}\n"
        "  split: {seed: 1, val_fraction: 0.2, test_fraction: 0.2}\n"
    )
    return cfg


def _prepare(cfg: Path, data: Path, run: Path) -> int:
    return main(["prepare", "--config", str(cfg), "--data", str(data), "--run-dir", str(run)])


def test_prepare_end_to_end_and_resume(tmp_path: Path, dataset: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    assert _prepare(_config(tmp_path, "compute"), dataset, run) == 0

    dl = Datalist.load(datalist_path(run))
    ids = sorted(dl.studies)
    assert len(ids) == sum(PLAN.values())
    assert sorted(i for n in SPLITS for i in dl.splits[n]) == ids
    for name in SPLITS:
        assert dl.labeled(name), f"no labeled study in {name}"
    raw = json.loads(datalist_path(run).read_text())
    assert {"splits", "studies", "summary", "cache_dir"} <= raw.keys()

    # computed lung masks, one per study, referenced from the datalist
    lungs_dir = run / "prepare" / "lungs"
    assert sorted(p.name for p in lungs_dir.glob("*_lungs.nii.gz")) == [
        f"{i}_lungs.nii.gz" for i in ids
    ]
    assert all(s.lungs is not None and s.lungs.parent == lungs_dir for s in dl.studies.values())

    # cache: train and val only, with lungs; labels only for labeled studies
    usable = [s.id for s in dl.studies_in(("train", "val"))]
    assert dl.cache_dir is not None
    assert sorted(p.stem for p in dl.cache_dir.glob("*.json")) == sorted(usable)
    vols = load_cache(dl.cache_dir, usable)
    assert all(v.has_lungs and v.has_label == dl.studies[v.id].labeled for v in vols.values())
    assert not any((dl.cache_dir / f"{i}.json").exists() for i in dl.splits["test"])
    assert (run / "config.yaml").is_file()

    # a second run redoes nothing
    import volseg.data.cache as cache_mod
    import volseg.data.lung_files as lungs_mod

    def fail(*args, **kwargs):
        raise AssertionError("work was redone")

    monkeypatch.setattr(cache_mod, "preprocess_study", fail)
    monkeypatch.setattr(lungs_mod, "segment_lungs_file", fail)
    assert _prepare(_config(tmp_path, "compute"), dataset, run) == 0
    assert Datalist.load(datalist_path(run)).splits == dl.splits


def test_prepare_with_dataset_lungs(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "run2"
    assert _prepare(_config(tmp_path, "dataset"), dataset, run) == 0
    dl = Datalist.load(datalist_path(run))
    assert all(s.lungs.parent == dataset / "lungs" for s in dl.studies.values())
    assert not (run / "prepare" / "lungs").exists()


def test_prepare_user_errors(tmp_path: Path, dataset: Path, capsys) -> None:
    for lungs_file in (dataset / "lungs").glob("*.nii.gz"):
        lungs_file.unlink()
    assert _prepare(_config(tmp_path, "dataset"), dataset, tmp_path / "r") == 2
    assert "data.lungs" in capsys.readouterr().err
    assert _prepare(_config(tmp_path, "compute"), tmp_path / "nowhere", tmp_path / "r") == 2
    assert "nowhere" in capsys.readouterr().err


def test_prepare_on_shared_tiny_dataset(tmp_path: Path, request) -> None:
    """On the synthetic ``tiny_dataset`` fixture (tests/conftest.py), when it is available."""
    try:
        root = Path(request.getfixturevalue("tiny_dataset"))
    except pytest.FixtureLookupError:
        pytest.skip("tiny_dataset fixture not available")
    lungs = "dataset" if (root / "lungs").is_dir() else "compute"
    run = tmp_path / "run"
    assert _prepare(_config(tmp_path, lungs), root, run) == 0
    dl = Datalist.load(datalist_path(run))
    assert dl.studies and dl.cache_dir is not None
    assert not set(dl.splits["test"]) & {s.id for s in dl.studies_in(("train", "val"))}
    if len(dl.labeled(SPLITS)) >= 3:
        assert all(dl.labeled(name) for name in SPLITS)
    usable = [s.id for s in dl.studies_in(("train", "val"))]
    assert sorted(p.stem for p in dl.cache_dir.glob("*.json")) == sorted(usable)
