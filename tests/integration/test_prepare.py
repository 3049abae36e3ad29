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


def _config_workers(tmp_path: Path, workers: int) -> Path:
    cfg = _config(tmp_path, "compute")
    cfg.write_text(cfg.read_text().replace("data:\n", f"data:\n  prepare_workers: {workers}\n"))
    return cfg


def _outputs(run: Path) -> dict[str, bytes]:
    """Every lung mask's voxels and every cache array, by name."""
    import nibabel as nib
    import numpy as np

    dl = Datalist.load(datalist_path(run))
    out = {
        p.name: np.asarray(nib.load(p).dataobj).tobytes()
        for p in sorted((run / "prepare" / "lungs").glob("*_lungs.nii.gz"))
    }
    out |= {p.name: np.load(p).tobytes() for p in sorted(dl.cache_dir.glob("*.npy"))}
    return out


def test_prepare_in_worker_processes_matches_one_process(tmp_path: Path, dataset: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert _prepare(_config_workers(tmp_path, 0), dataset, one) == 0
    assert _prepare(_config_workers(tmp_path, 2), dataset, two) == 0
    assert Datalist.load(datalist_path(one)).splits == Datalist.load(datalist_path(two)).splits
    serial, parallel = _outputs(one), _outputs(two)
    assert len(serial) > sum(PLAN.values())
    assert parallel == serial


def test_prepare_redoes_only_changed_studies(tmp_path: Path, dataset: Path) -> None:
    import numpy as np

    from volseg.data import layout
    from volseg.io import read_nifti, write_nifti

    run, cfg = tmp_path / "run", _config_workers(tmp_path, 2)
    assert _prepare(cfg, dataset, run) == 0
    lungs = run / "prepare" / "lungs"
    dl = Datalist.load(datalist_path(run))
    usable = sorted(s.id for s in dl.studies_in(("train", "val")))
    changed, dropped = usable[0], usable[1]

    def stamps() -> dict[str, int]:
        files = [*lungs.glob("*_lungs.nii.gz"), *dl.cache_dir.glob("*.image.npy")]
        return {p.name: p.stat().st_mtime_ns for p in files}

    before = stamps()
    image = dl.studies[changed].image
    data, affine = read_nifti(image)
    data = data.copy()
    data[data.shape[0] // 2, :, :] = -1000  # an edited scan: a new image, same grid
    write_nifti(image, data.astype(np.int16), affine)
    (lungs / f"{dropped}_lungs.json").unlink()  # a mask whose origin is unknown
    assert _prepare(cfg, dataset, run) == 0

    after = stamps()
    redone = {name for name in before if after[name] != before[name]}
    assert redone == {
        layout.lungs_path(lungs, changed).name,
        layout.lungs_path(lungs, dropped).name,
        f"{changed}.image.npy",
        f"{dropped}.image.npy",  # its new lung mask is a changed source of its entry
    }
