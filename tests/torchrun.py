"""Launch a command under torchrun on CPU for the DDP tests: two gloo ranks, one thread each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_torchrun(args: list[str], timeout: float, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node N *args`` in the repo,
    with the repo on PYTHONPATH and progress bars off; output captured as text."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        VOLSEG_NO_PROGRESS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return subprocess.run(
        [*launcher, "--nproc_per_node", str(nproc), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )
