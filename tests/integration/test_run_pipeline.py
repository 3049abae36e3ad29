"""`volseg run` for real on the tiny synthetic set: killed mid fine-tuning, resumed, re-run.

The orchestrator's unit tests use fake stages; this one runs every real stage (prepare,
gan, pretrain, finetune, predict, evaluate) with configs/smoke.yaml-sized settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KILLER = REPO / "tests" / "kill_after_checkpoint.py"
STAGES = ("prepare", "gan", "pretrain", "finetune", "predict", "evaluate")


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text(encoding="utf-8"))


def _volseg(args: list[str], *, kill_after: str | None = None, **kwargs) -> subprocess.Popen:
    """``volseg ARGS``; with ``kill_after=STAGE`` SIGKILLed after that stage's first
    checkpoint (tests/kill_after_checkpoint.py: a fixed point, no polling)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", VOLSEG_NO_PROGRESS="1")
    launcher = ["-m", "volseg"] if kill_after is None else [str(KILLER), kill_after, "1"]
    return subprocess.Popen(
        [sys.executable, *launcher, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_run_is_killed_in_finetune_resumes_and_reruns_only_what_changed(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    base = [
        "run",
        "--config",
        str(REPO / "configs" / "smoke.yaml"),
        "--data",
        str(tiny_dataset),
        "--run-dir",
        str(run_dir),
        "--set",
        "data.lungs=dataset",
        # long enough to be killed mid-way, with a checkpoint every 2 steps
        "--set",
        "finetune.epochs=3",
        "--set",
        "finetune.iters_per_epoch=6",
        "--set",
        "finetune.checkpoint_every=2",
    ]

    proc = _volseg(base, kill_after="finetune")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert (run_dir / "finetune" / "checkpoint_last.pt").is_file()
    assert _manifest(run_dir, "finetune")["status"] == "running"
    assert not (run_dir / "finetune" / "model.pt").exists()
    before = {s: _manifest(run_dir, s)["run_id"] for s in ("prepare", "gan", "pretrain")}

    out = _finish(_volseg(base))
    assert "finetune: resuming at step 2 of 18" in out, out[-2000:]
    for stage in STAGES:
        assert _manifest(run_dir, stage)["status"] == "done", stage
    # the stages before fine-tuning were not run again
    assert {s: _manifest(run_dir, s)["run_id"] for s in before} == before
    assert (run_dir / "finetune" / "model.pt").is_file()
    assert (run_dir / "evaluate" / "report.md").is_file()
    done = {s: _manifest(run_dir, s)["run_id"] for s in STAGES}

    # a second identical run does nothing
    _finish(_volseg(base))
    assert {s: _manifest(run_dir, s)["run_id"] for s in STAGES} == done

    # a fine-tuning setting changes: only finetune and later stages run again
    _finish(_volseg([*base, "--set", "finetune.lr=0.0005"]))
    after = {s: _manifest(run_dir, s)["run_id"] for s in STAGES}
    for stage in ("prepare", "gan", "pretrain"):
        assert after[stage] == done[stage], stage
    for stage in ("finetune", "predict", "evaluate"):
        assert after[stage] != done[stage], stage
