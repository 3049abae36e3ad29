"""A real training stage under torchrun: `volseg finetune` on two gloo processes (CPU).

The engine's DDP test drives the Trainer directly; this one runs the CLI command the way a
cluster user does: data, network, loss, validation and bundle of the real stage on two
ranks, and every worker exiting 0. (Before the commands left the process group, a worker
that returned while rank 0 was still writing the bundle sometimes aborted with "terminate
called without an active exception" and failed the job; that race was intermittent, so
this test cannot be relied on to catch it.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_finetune_stage import CONFIG
from tests.torchrun import run_torchrun
from volseg.cli import main
from volseg.engine import read_metrics


@pytest.mark.timeout(240)
def test_finetune_under_torchrun_two_ranks(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    common = ["--config", str(cfg), "--data", str(tiny_dataset), "--run-dir", str(run)]
    assert main(["prepare", *common]) == 0

    proc = run_torchrun(["-m", "volseg", "finetune", *common, "--no-progress"], timeout=220)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr

    out = run / "finetune"
    assert (out / "model.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4  # 2 epochs x 2 steps, each step a batch on both ranks
    records = read_metrics(out / "metrics.jsonl")
    vals = [r for r in records if r["type"] == "val"]
    assert [v["epoch"] for v in vals] == [1, 2]  # rank 0 alone writes the log
    assert "batch 2 x 2 ranks" in proc.stderr
