"""`volseg gan` end to end on the tiny synthetic dataset (CPU, tiny networks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from volseg.cli import main
from volseg.data import layout
from volseg.data.mosmed import Datalist
from volseg.io import read_nifti
from volseg.pseudo.qc import QC_COLUMNS, read_qc
from volseg.rundir import datalist_path

CONFIG = """\
seed: 0
data:
  spacing: [5.5, 5.5, 12.0]
  lungs: dataset
  split: {seed: 0, val_fraction: 0.2, test_fraction: 0.25}
gan:
  epochs: 1
  iters_per_epoch: 2
  batch_size: 2
  patch_size: [32, 32, 8]
  warmup_epochs: 0
  val_crops: 2
  generator_params: {widths: [4, 8, 16], strides: [[2, 2, 1], [2, 2, 2]]}
  discriminator_params: {widths: [4, 8, 16], strides: [[2, 2, 1], [2, 2, 2]]}
"""


def _args(cfg: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return ["--config", str(cfg), "--data", str(data), "--run-dir", str(run), *extra]


def _outputs(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def gan_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A prepared run directory with the gan stage done once; returns (config, run_dir)."""
    tmp = tmp_path_factory.mktemp("gan")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(CONFIG)
    run = tmp / "run"
    assert main(["prepare", *_args(cfg, tiny_dataset, run)]) == 0
    assert main(["gan", *_args(cfg, tiny_dataset, run)]) == 0
    return cfg, run


def test_gan_writes_pseudo_masks_for_exactly_the_unlabeled_covid_scans(
    gan_run: tuple[Path, Path],
) -> None:
    _, run = gan_run
    stage = run / "gan"
    assert (stage / "checkpoint_last.pt").is_file()
    assert (stage / "checkpoint_best.pt").is_file()
    assert (stage / "metrics.jsonl").is_file()

    dl = Datalist.load(datalist_path(run))
    expected = sorted(s.id for s in dl.covid_unlabeled(("train", "val")))
    assert expected, "the tiny dataset should have unlabeled COVID train/val scans"
    excluded = {s.id for s in dl.studies_in("test")} | {
        s.id for s in dl.studies.values() if s.labeled
    }
    assert not excluded & set(expected)

    folder = stage / "pseudo_masks"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [layout.pseudo_path(folder, i).name for i in expected]
        + [layout.pseudo_prob_path(folder, i).name for i in expected]
    )
    for sid in expected:
        image, affine = read_nifti(dl.studies[sid].image)
        mask, mask_affine = read_nifti(layout.pseudo_path(folder, sid))
        prob, prob_affine = read_nifti(layout.pseudo_prob_path(folder, sid))
        assert mask.shape == image.shape and prob.shape == image.shape
        np.testing.assert_allclose(mask_affine, affine, atol=1e-5)
        np.testing.assert_allclose(prob_affine, affine, atol=1e-5)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert prob.dtype == np.float32 and prob.min() >= 0.0 and prob.max() <= 1.0
        # the mask is the soft map's 0.5 level (after speck removal it can only be smaller)
        assert not np.any(mask.astype(bool) & (prob < 0.5))

    rows = read_qc(stage / "qc.csv")
    assert (stage / "qc.csv").read_text().splitlines()[0] == ",".join(QC_COLUMNS)
    assert [r.study_id for r in rows] == expected
    for row in rows:
        assert row.split == dl.split_of(row.study_id)
        assert row.category == dl.studies[row.study_id].category
        pseudo, pseudo_affine = read_nifti(layout.pseudo_path(folder, row.study_id))
        voxel_ml = abs(np.linalg.det(pseudo_affine[:3, :3])) / 1000.0
        expected_ml = np.count_nonzero(pseudo) * voxel_ml
        assert row.pseudo_volume_ml == pytest.approx(expected_ml, rel=1e-3, abs=1e-3)

    summary = json.loads((stage / "pseudo_summary.json").read_text())
    assert summary["threshold"] > 0
    # Calibrated on the labeled val scans (independent of finetune.n_labeled), never on test.
    assert dl.labeled("val"), "the tiny dataset should have labeled val scans"
    choice = summary["threshold_choice"]
    assert choice["method"] == "calibrated" and choice["split"] == "val"
    assert set(choice["studies"]) == {s.id for s in dl.labeled("val")}
    assert summary["n_scans"] == len(expected)
    assert summary["n_passed"] == sum(r.passed for r in rows)


def test_rerun_is_a_noop_and_threshold_override_regenerates(
    gan_run: tuple[Path, Path], tiny_dataset: Path
) -> None:
    cfg, run = gan_run
    stage = run / "gan"
    before = _outputs(stage)
    assert main(["gan", *_args(cfg, tiny_dataset, run)]) == 0
    assert _outputs(stage) == before

    # A fixed threshold changes the pseudo-masks but not the trained networks.
    assert main(["gan", *_args(cfg, tiny_dataset, run, "--set", "gan.threshold=0.05")]) == 0
    after = _outputs(stage)
    assert after["checkpoint_last.pt"] == before["checkpoint_last.pt"]
    assert after["pseudo_summary.json"] != before["pseudo_summary.json"]
    summary = json.loads((stage / "pseudo_summary.json").read_text())
    assert summary["threshold"] == pytest.approx(0.05)
    assert summary["threshold_choice"]["method"] == "config"


def test_gan_batches_are_step_indexed_and_corrupt_only_the_lungs(
    gan_run: tuple[Path, Path], tiny_dataset: Path
) -> None:
    import torch

    from volseg.config import load_config
    from volseg.stages.common import load_prepared
    from volseg.stages.gan_train import GanPatchDataset, make_painter, training_volumes

    cfg_path, run = gan_run
    cfg = load_config(cfg_path, data_root=tiny_dataset, run_dir=run)
    prepared = load_prepared(cfg)
    healthy, covid = training_volumes(prepared)
    train_ids = {s.id for s in prepared.datalist.studies_in("train")}
    assert {v.id for v in healthy + covid} <= train_ids
    data = GanPatchDataset(healthy, covid, (32, 32, 8), make_painter(cfg), seed=3)
    a, b, c = data[5], data[5], data[6]
    assert set(a) == {"clean", "corrupted", "blob", "lungs", "covid"}
    for key in a:
        assert a[key].shape == (1, 32, 32, 8)
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["clean"], c["clean"])
    changed = (a["corrupted"] != a["clean"]) | (a["blob"] > 0)
    assert not torch.any(changed & (a["lungs"] == 0))


def test_checkpoint_is_chosen_by_pseudo_mask_dice_on_labeled_val_scans(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """Three epochs: the checkpoint that makes the pseudo-masks is the epoch with the best
    val_pseudo_dice, and the pseudo-mask stage's calibration on those same val scans
    reproduces that Dice (so the selection scored what the stage then uses)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("  epochs: 1\n", "  epochs: 3\n"))
    run = tmp_path / "run"
    assert main(["prepare", *_args(cfg, tiny_dataset, run)]) == 0
    assert main(["gan", *_args(cfg, tiny_dataset, run)]) == 0
    lines = (run / "gan" / "metrics.jsonl").read_text().splitlines()
    vals = [r for r in map(json.loads, lines) if r["type"] == "val"]
    assert len(vals) == 3 and all("val_pseudo_dice" in r for r in vals)
    best = max(vals, key=lambda r: r["val_pseudo_dice"])
    summary = json.loads((run / "gan" / "pseudo_summary.json").read_text())
    chosen = summary["checkpoint"]
    assert chosen["metric"] == "val_pseudo_dice"
    assert chosen["value"] == pytest.approx(best["val_pseudo_dice"])
    assert summary["threshold_choice"]["mean_dice"] == pytest.approx(best["val_pseudo_dice"])

    # gan.select_by: restore brings back the restoration error as the criterion.
    assert main(["gan", *_args(cfg, tiny_dataset, run, "--set", "gan.select_by=restore")]) == 0
    summary = json.loads((run / "gan" / "pseudo_summary.json").read_text())
    assert summary["checkpoint"]["metric"] == "val_restore"
