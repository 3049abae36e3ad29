"""`volseg pretrain` end to end on the tiny synthetic dataset, and Barlow Twins learning (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from volseg.cli import main
from volseg.config import Config, load_config
from volseg.data.patches import PatchSource
from volseg.engine import read_metrics
from volseg.losses import BarlowTwinsLoss
from volseg.models import ProjectorHead, build_model
from volseg.pipeline.stage_command import run_stage_command
from volseg.stages.common import model_kwargs
from volseg.stages.pretrain import (
    ENCODER_FILE,
    ENCODER_FORMAT,
    PROBE_FILE,
    BarlowTwinsNet,
    BarlowViewDataset,
)

TINY_MODEL = (
    "model.params.transunet3d={widths: [8, 16, 32, 64], strides: [[2, 2, 1], [2, 2, 2], "
    "[2, 2, 2]], hidden_size: 64, depth: 2, num_heads: 2}"
)


def _config(run: Path, data: Path, *extra: str) -> Config:
    overrides = [
        "data.lungs=dataset",
        "data.spacing=[5.5, 5.5, 12.0]",
        "data.split={seed: 0, val_fraction: 0.2, test_fraction: 0.25}",
        TINY_MODEL,
        "model.patch_size=[32, 32, 16]",
        "pretrain={epochs: 1, iters_per_epoch: 3, batch_size: 2, "
        "projector_dims: [64, 64], probe_voxels: 200}",
        *extra,
    ]
    return load_config(None, overrides, data_root=data, run_dir=run)


@pytest.fixture(scope="module")
def prepared_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from volseg.stages.prepare import run_prepare

    run = tmp_path_factory.mktemp("pretrain") / "run"
    run_prepare(_config(run, tiny_dataset))
    return run


def test_pretrain_stage_end_to_end_and_noop(
    prepared_run: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(prepared_run, tiny_dataset)
    out = run_stage_command(cfg, "pretrain")
    assert out == prepared_run / "pretrain"

    # encoder.pt: the exact contract, loadable strictly into a fresh full model's encoder
    payload = torch.load(out / ENCODER_FILE, map_location="cpu", weights_only=True)
    assert payload["format"] == ENCODER_FORMAT
    assert payload["model"]["name"] == cfg.model.name
    fresh = build_model(payload["model"]["name"], **payload["model"]["params"])
    fresh.encoder.load_state_dict(payload["state_dict"], strict=True)
    assert payload["model"]["params"] == json.loads(json.dumps(model_kwargs(cfg)))
    random_init = build_model(cfg.model.name, **model_kwargs(cfg)).encoder.state_dict()
    changed = [k for k, v in payload["state_dict"].items() if not torch.equal(v, random_init[k])]
    assert changed, "pretraining did not change the encoder"

    # metrics.jsonl: finite Barlow Twins losses for the steps run
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("type") == "train"]
    assert rows and rows[-1]["step"] == 3
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)

    # probe.json: pretrained and random encoders (and the intensity baseline) scored
    probe = json.loads((out / PROBE_FILE).read_text())
    # the same held-out voxels scored for each representation
    assert probe["pretrained"]["n_test"] > 0
    assert {probe[n]["n_test"] for n in ("pretrained", "random", "intensity")} == {
        probe["pretrained"]["n_test"]
    }
    # lesions are denser than lung: HU alone must separate them (probe math: test_probe.py)
    assert probe["intensity"]["auc"] > 0.8, probe["intensity"]
    assert not set(probe["fit_studies"]) & set(probe["score_studies"])

    # re-running is a no-op: nothing is loaded, trained or rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}

    def fail(*args, **kwargs):
        raise AssertionError("a finished pretrain stage must not load data again")

    monkeypatch.setattr("volseg.stages.common.load_prepared", fail)
    assert run_stage_command(cfg, "pretrain") == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == stamps

    # a changed setting is not a no-op (the engine then continues from its checkpoint)
    monkeypatch.undo()
    more = _config(prepared_run, tiny_dataset, "pretrain.epochs=2", "pretrain.probe=false")
    run_stage_command(more, "pretrain")
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("type") == "train"]
    assert rows[-1]["step"] == 6
    assert torch.load(out / ENCODER_FILE, weights_only=True)["pretrain"]["epochs"] == 2


def test_pretrain_command_rejects_batch_of_one(
    prepared_run: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "pretrain",
            "--data",
            str(tiny_dataset),
            "--run-dir",
            str(prepared_run.parent / "other"),
            "--config",
            str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"),
            "--set",
            "pretrain.batch_size=1",
        ]
    )
    assert code == 2
    assert "pretrain.batch_size" in capsys.readouterr().err


def _blobs(seed: int) -> PatchSource:
    """A small volume of bright blobs in lungs: crops differ in content and position."""
    rng = np.random.default_rng(seed)
    image = np.full((40, 40, 20), 0.1, np.float32)
    grid = np.indices(image.shape).transpose(1, 2, 3, 0)
    for _ in range(6):
        centre = rng.uniform((4, 4, 2), (36, 36, 18))
        radius = rng.uniform(2, 6)
        image[np.linalg.norm((grid - centre) * (1, 1, 2), axis=-1) < radius] = rng.uniform(0.4, 1)
    return PatchSource(id=f"blobs{seed}", image=image, lungs=np.ones(image.shape, np.uint8))


def test_barlow_views_are_seeded_and_distinct() -> None:
    ds = BarlowViewDataset([_blobs(0)], (16, 16, 8), seed=3)
    a, b = ds[7], ds[7]
    assert a["views"].shape == (2, 1, 16, 16, 8)
    assert torch.equal(a["views"], b["views"])
    assert not torch.equal(a["views"][0], a["views"][1])
    assert "label" not in a


def test_barlow_twins_loss_decreases_on_a_tiny_example() -> None:
    torch.manual_seed(0)
    model = build_model(
        "transunet3d",
        widths=[4, 8, 16],
        strides=[[2, 2, 2], [2, 2, 2]],
        hidden_size=32,
        depth=1,
        num_heads=2,
        img_size=[16, 16, 8],
    )
    net = BarlowTwinsNet(model.encoder, ProjectorHead(model.encoder.out_channels, dims=(32, 32)))
    ds = BarlowViewDataset([_blobs(0), _blobs(1)], (16, 16, 8), seed=0)
    views = torch.stack([ds[i]["views"] for i in range(8)])  # one fixed batch of 8 crops
    loss_fn = BarlowTwinsLoss(5e-3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        z1, z2 = net(views[:, 0], views[:, 1])
        loss = loss_fn(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.25 * losses[0], losses
