"""Exact resume: a run SIGKILLed mid-epoch and re-run ends bit-identical to an unbroken one.

This file is also the training script the test launches (``python test_resume.py ...``), and
its toy model/dataset are reused by the engine unit tests and the DDP test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from volseg.config import TrainConfig
from volseg.engine import (
    StepDataset,
    Trainer,
    TrainState,
    build_scheduler,
    load_checkpoint,
    make_loader,
    read_metrics,
    seed_everything,
)

REPO = Path(__file__).resolve().parents[2]
STAGE = "toy"


class ToyDataset(StepDataset):
    """Random 8^3 volumes; the target is the mean of their first half (learnable)."""

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
        noise = torch.randn((), generator=self.torch_generator(rng)) * 0.01
        target = torch.tensor([float(x[..., :4].mean())]) + noise
        return {"image": torch.from_numpy(x), "target": target}


class ToyNet(nn.Module):
    """Conv -> ReLU -> dropout -> global pool -> linear; dropout exercises the torch RNG."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, width, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.conv(x)))
        return self.head(h.mean(dim=(2, 3, 4)))


def toy_config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        epochs=3,
        iters_per_epoch=8,
        batch_size=2,
        lr=1e-2,
        warmup_epochs=1,
        checkpoint_every=3,
        log_every=2,
        grad_clip=1.0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def build_trainer(
    run_dir: Path,
    cfg: TrainConfig,
    *,
    workers: int = 0,
    seed: int = 0,
    schedule: str = "cosine",
    kill_at: int | None = None,
    raise_at: int | None = None,
    val_mode: str = "main",
    val_fn: Any = "default",
) -> Trainer:
    """The toy stage: one net, AdamW, a schedule, a val_fn tracking 'mse' (lower is better)."""
    seed_everything(seed)
    width = 4
    net = ToyNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = build_scheduler(opt, cfg, schedule, plateau_mode="min", plateau_patience=0)  # type: ignore[arg-type]
    state = TrainState(
        modules={"net": net},
        optimizers={"net": opt},
        schedulers={"net": sched},
        model_args={"net": {"width": width}},
    )

    def step_fn(batch: dict, state: TrainState, ctx: Any) -> dict:
        if kill_at is not None and state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if raise_at is not None and state.global_step == raise_at:
            raise KeyboardInterrupt("simulated interruption")
        batch = ctx.to_device(batch)
        with ctx.autocast():
            loss = F.mse_loss(state.modules["net"](batch["image"]), batch["target"])
        norm = ctx.backward_step(loss, state.optimizers["net"])
        return {"loss": loss.detach(), "grad_norm": norm}

    val = ToyDataset(seed=10_000)
    val_x = torch.stack([val[i]["image"] for i in range(4)])
    val_y = torch.stack([val[i]["target"] for i in range(4)])

    def default_val(state: TrainState) -> dict:
        mse = F.mse_loss(state.raw("net")(val_x), val_y).item()
        return {"mse": mse, "draw": float(torch.rand(()))}  # validation may use the RNG too

    return Trainer(
        state,
        step_fn,
        lambda sampler: make_loader(ToyDataset(seed), sampler, num_workers=workers),
        cfg,
        run_dir,
        STAGE,
        default_val if val_fn == "default" else val_fn,
        seed,
        best_metric="mse",
        best_mode="min",
        val_mode=val_mode,  # type: ignore[arg-type]
        device=torch.device("cpu"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-at", type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trainer = build_trainer(args.run_dir, toy_config(), workers=args.workers, kill_at=args.kill_at)
    result = trainer.fit(resume=True)
    print(json.dumps({"ran_steps": result.ran_steps, "global_step": result.global_step}))
    return 0


# ---------------------------------------------------------------------------------- test


def _launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", VOLSEG_NO_PROGRESS="1")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__)), str(run_dir), "--workers", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _wait(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def _curve(run_dir: Path) -> list[tuple]:
    """Metrics records without wall-clock times and speeds."""
    return [
        tuple(sorted((k, v) for k, v in r.items() if k not in ("time", "samples_per_s")))
        for r in read_metrics(run_dir / STAGE / "metrics.jsonl")
    ]


def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    ref_dir, broken_dir = tmp_path / "ref", tmp_path / "broken"
    ref_proc = _launch(ref_dir)  # the two first runs go side by side to save time
    killed_code, _, killed_err = _wait(_launch(broken_dir, "--kill-at", "13"))
    ref_code, ref_out, ref_err = _wait(ref_proc)
    assert ref_code == 0, ref_err
    assert json.loads(ref_out.splitlines()[-1]) == {"ran_steps": 24, "global_step": 24}

    assert killed_code == -signal.SIGKILL, killed_err
    last = broken_dir / STAGE / "checkpoint_last.pt"
    assert load_checkpoint(last)["global_step"] == 12  # mid-epoch 2 (8 steps per epoch)
    assert not list((broken_dir / STAGE).glob(".*.tmp*")), "no partial checkpoint left"

    code, out, err = _wait(_launch(broken_dir))  # the same command again continues
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == {"ran_steps": 12, "global_step": 24}

    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        a = load_checkpoint(ref_dir / STAGE / name)
        b = load_checkpoint(broken_dir / STAGE / name)
        for key, tensor in a["modules"]["net"].items():
            assert torch.equal(tensor, b["modules"]["net"][key]), (name, key)
        assert (a["best_metric"], a["best_epoch"]) == (b["best_metric"], b["best_epoch"])
    assert _curve(ref_dir) == _curve(broken_dir)  # same log, no duplicated lines

    mtime = last.stat().st_mtime_ns  # a finished run re-run does nothing
    result = build_trainer(broken_dir, toy_config()).fit(resume=True)
    assert result.ran_steps == 0 and result.global_step == 24
    assert last.stat().st_mtime_ns == mtime


if __name__ == "__main__":
    raise SystemExit(main())
