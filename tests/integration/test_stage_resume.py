"""Exact resume of the real stages: gan, pretrain and finetune, each SIGKILLed mid-stage
right after a mid-run checkpoint and run again, end bit-identical to an unbroken run.

The kill is deterministic, not timed: the stage runs in a child process
(``tests/kill_after_checkpoint.py``) that sends SIGKILL to itself just after the N-th
``checkpoint_last.pt`` is on disk (no polling, no race). Compared: every tensor of every
network, optimizer and scheduler state, the RNG states, the counters and the metrics log
(wall-clock fields aside), and each stage's product (pseudo-masks, encoder, model).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from volseg.cli import main
from volseg.engine import load_checkpoint, read_metrics

REPO = Path(__file__).resolve().parents[2]
KILLER = REPO / "tests" / "kill_after_checkpoint.py"

CONFIG = """\
seed: 0
data:
  spacing: [5.5, 5.5, 12.0]
  lungs: dataset
  split: {seed: 0, val_fraction: 0.2, test_fraction: 0.25}
model:
  name: transunet3d
  patch_size: [32, 32, 16]
  params:
    transunet3d: {widths: [4, 8, 16, 32], strides: [[2, 2, 1], [2, 2, 2], [2, 2, 2]],
                  hidden_size: 32, depth: 1, num_heads: 2}
gan: {epochs: 2, iters_per_epoch: 3, batch_size: 2, patch_size: [32, 32, 16],
      warmup_epochs: 0, val_crops: 2, checkpoint_every: 1,
      generator_params: {widths: [4, 8, 16], strides: [[2, 2, 1], [2, 2, 2]]},
      discriminator_params: {widths: [4, 8, 16], strides: [[2, 2, 1], [2, 2, 2]]}}
pretrain: {epochs: 2, iters_per_epoch: 3, batch_size: 2, projector_dims: [32, 32],
           probe_voxels: 200, checkpoint_every: 1}
finetune: {epochs: 2, iters_per_epoch: 3, batch_size: 2, warmup_epochs: 0, checkpoint_every: 1}
"""

KILL_AT = 4  # mid epoch 2 of 3 steps each (epochs end at checkpoints 3 and 6)


def _args(cfg: Path, data: Path, run: Path) -> list[str]:
    return ["--config", str(cfg), "--data", str(data), "--run-dir", str(run)]


def _killed(stage: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", VOLSEG_NO_PROGRESS="1")
    return subprocess.run(
        [sys.executable, str(KILLER), stage, str(KILL_AT), stage, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _assert_same(a: Any, b: Any, where: str, runs: tuple[str, str] = ("", "")) -> None:
    """Recursive bitwise equality of checkpoint contents (tensors, arrays, plain values);
    in text, the second run's folder ``runs[1]`` stands for the first's ``runs[0]``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}", runs)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]", runs)
    elif isinstance(a, str):
        assert a == b.replace(runs[1], runs[0]), (where, a, b)
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN equals NaN here


STATE_KEYS = ("modules", "optimizers", "schedulers", "scaler", "extra", "rng", "epoch")
STATE_KEYS += ("global_step", "best_metric", "best_epoch", "last_val")


def _curve(stage_dir: Path) -> list[dict]:
    clock = ("time", "samples_per_s", "elapsed_s")
    return [
        {k: v for k, v in r.items() if k not in clock}
        for r in read_metrics(stage_dir / "metrics.jsonl")
    ]


def _products(stage_dir: Path) -> dict[str, Any]:
    """The stage's outputs other than checkpoints, logs and manifest: bytes, or the loaded
    content of ``.pt`` files (their zip records carry the temporary file's name)."""
    skip = {"metrics.jsonl", "manifest.json", "config.yaml", "checkpoint_last.pt"}
    skip |= {"checkpoint_best.pt"}  # compared tensor by tensor above
    return {
        str(p.relative_to(stage_dir)): (
            torch.load(p, weights_only=True) if p.suffix == ".pt" else p.read_bytes()
        )
        for p in sorted(stage_dir.rglob("*"))
        if p.is_file()
        and p.name not in skip
        and "tb" not in p.relative_to(stage_dir).parts
        and not p.name.endswith((".log", ".json"))
    }


@pytest.mark.slow
def test_gan_pretrain_finetune_killed_mid_stage_resume_bit_identical(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    ref, broken = tmp_path / "ref", tmp_path / "broken"
    runs = (str(ref), str(broken))
    for run in (ref, broken):
        assert main(["prepare", *_args(cfg, tiny_dataset, run)]) == 0
    for stage in ("gan", "pretrain", "finetune"):
        assert main([stage, *_args(cfg, tiny_dataset, ref)]) == 0
        child = _killed(stage, _args(cfg, tiny_dataset, broken))
        assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
        last = broken / stage / "checkpoint_last.pt"
        assert load_checkpoint(last)["global_step"] == KILL_AT, stage
        assert main([stage, *_args(cfg, tiny_dataset, broken)]) == 0  # resumes

        for name in ("checkpoint_last.pt", "checkpoint_best.pt"):  # pretrain: no best
            assert (ref / stage / name).is_file() == (broken / stage / name).is_file()
            if not (ref / stage / name).is_file():
                continue
            a = load_checkpoint(ref / stage / name)
            b = load_checkpoint(broken / stage / name)
            assert a["global_step"] == b["global_step"], (stage, name)
            if name == "checkpoint_last.pt":
                assert a["global_step"] == 6, stage
            for key in STATE_KEYS:
                _assert_same(a.get(key), b.get(key), f"{stage}/{name}:{key}", runs)
        assert _curve(ref / stage) == _curve(broken / stage), stage
        products = _products(ref / stage)
        assert products, f"{stage} wrote no product to compare"
        _assert_same(products, _products(broken / stage), stage, runs)


@pytest.mark.slow
def test_finetune_with_device_augmentation_killed_mid_stage_resumes_bit_identical(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``finetune.augment_on: device``: the batch augmentation's parameters come from the
    step-indexed samples, so a resumed run still ends where an unbroken one does."""
    from volseg.data import batch_augment

    calls: list[int] = []
    real = batch_augment.augment_batch

    def spy(batch: dict, params: torch.Tensor) -> dict:
        calls.append(len(params))
        return real(batch, params)

    monkeypatch.setattr(batch_augment, "augment_batch", spy)  # the reference run's steps
    finetune = "finetune: {epochs: 2"
    config = CONFIG.replace(finetune, finetune.replace("{", "{augment_on: device, "))
    assert config.count("augment_on: device") == 1
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config)  # gan and pretrain not run: no pseudo-masks, no encoder
    ref, broken = tmp_path / "ref", tmp_path / "broken"
    for run in (ref, broken):
        assert main(["prepare", *_args(cfg, tiny_dataset, run)]) == 0
    assert main(["finetune", *_args(cfg, tiny_dataset, ref)]) == 0
    assert calls == [2] * 6  # every step's batch went through the device path
    child = _killed("finetune", _args(cfg, tiny_dataset, broken))
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert load_checkpoint(broken / "finetune" / "checkpoint_last.pt")["global_step"] == KILL_AT
    assert main(["finetune", *_args(cfg, tiny_dataset, broken)]) == 0
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        a = load_checkpoint(ref / "finetune" / name)
        b = load_checkpoint(broken / "finetune" / name)
        for key in STATE_KEYS:
            _assert_same(a.get(key), b.get(key), f"{name}:{key}", (str(ref), str(broken)))
    assert _curve(ref / "finetune") == _curve(broken / "finetune")
