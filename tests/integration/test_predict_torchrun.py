"""`volseg predict` under torchrun: two gloo ranks (CPU) predict their shares and rank 0
writes one summary.csv, every scan once in the inputs' order, masks as one process makes."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.torchrun import REPO, run_torchrun
from volseg.bundle import save_bundle
from volseg.models import build_model
from volseg.recipe import Recipe

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch.distributed.run") is None
    or not torch.distributed.is_available(),
    reason="torchrun (torch.distributed.run) is not available",
)


def _bundle(path: Path) -> Path:
    torch.manual_seed(0)
    params = {"filters": [4, 8, 16], "strides": [[2, 2, 1], [2, 2, 2]]}
    return save_bundle(
        path,
        build_model("unet3d", **params),
        "unet3d",
        params,
        Recipe((5.5, 5.5, 18.0), (-1000, 400), (32, 32, 8)),
        {"min_component_mm3": 0},
    )


def _single_process(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m volseg *args`` with the torchrun workers' environment (one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", VOLSEG_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "volseg", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


@pytest.mark.timeout(240)
def test_predict_under_torchrun_writes_one_summary(tiny_dataset: Path, tmp_path: Path) -> None:
    studies = sorted((tiny_dataset / "studies").glob("*/*.nii.gz"))[:4]
    ids = [f.name.removesuffix(".nii.gz") for f in studies]
    bundle = _bundle(tmp_path / "bundle" / "model.pt")
    common = ["-m", str(bundle), "-i", *map(str, studies), "--no-progress"]

    ranks = run_torchrun(["-m", "volseg", "predict", *common, "-o", str(tmp_path / "ddp")], 200)
    assert ranks.returncode == 0, ranks.stderr[-4000:]
    alone = _single_process(["predict", *common, "-o", str(tmp_path / "one")])
    assert alone.returncode == 0, alone.stderr[-4000:]

    ddp = tmp_path / "ddp"
    assert not list(ddp.glob("summary_part*.csv"))
    with (ddp / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ids  # every scan once, in the inputs' order
    assert not any(r["error"] for r in rows)
    for sid in ids:
        a = np.asarray(nib.load(ddp / f"{sid}_mask.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "one" / f"{sid}_mask.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(240)
def test_predict_under_torchrun_lists_a_failed_scan(tiny_dataset: Path, tmp_path: Path) -> None:
    """A scan that fails on rank 1 does not stop the others: the one summary lists it with
    its error and the job fails (exit code 2 on the workers)."""
    studies = sorted((tiny_dataset / "studies").glob("*/*.nii.gz"))[:3]
    blank = tmp_path / "blank.nii.gz"  # an all-air volume: refused when decoded
    nib.save(nib.Nifti1Image(np.full((64, 64, 16), -1000, np.int16), np.eye(4)), blank)
    inputs = [studies[0], blank, *studies[1:]]  # round-robin: the blank scan is rank 1's
    bundle = _bundle(tmp_path / "bundle" / "model.pt")
    out = tmp_path / "ddp"
    args = ["-m", str(bundle), "-i", *map(str, inputs), "-o", str(out), "--no-progress"]

    ranks = run_torchrun(["-m", "volseg", "predict", *args], 200)
    assert ranks.returncode != 0
    assert "1 of 4 scans failed" in ranks.stderr
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [f.name.removesuffix(".nii.gz") for f in inputs]
    assert [bool(r["error"]) for r in rows] == [False, True, False, False]
    assert not (out / "blank_mask.nii.gz").exists()
