"""A file-read spy: no test-split scan (image, mask, truth, lung mask or cache entry) is
opened by prepare's cache, gan, pretrain or finetune.

Each stage runs in a child process that records every file opened and the volseg code that
opened it (Python audit hooks, tests/record_opens.py). In prepare, the one reader allowed to
open test files is the dataset integrity check (``volseg.data.check``: it decodes every file
once so a corrupt one fails before training, and learns nothing); prepare runs with the
dataset's lung masks here, since computing lung masks for test scans (no labels, no
learning) is its job too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from volseg.data.mosmed import Datalist
from volseg.rundir import datalist_path

REPO = Path(__file__).resolve().parents[2]
RECORDER = REPO / "tests" / "record_opens.py"

CONFIG = """\
seed: 0
data:
  spacing: [5.5, 5.5, 12.0]
  lungs: dataset
  prepare_workers: 0  # every read in the process the spy watches
  split: {seed: 0, val_fraction: 0.2, test_fraction: 0.25}
model:
  name: transunet3d
  patch_size: [32, 32, 16]
  params:
    transunet3d: {widths: [4, 8, 16, 32], strides: [[2, 2, 1], [2, 2, 2], [2, 2, 2]],
                  hidden_size: 32, depth: 1, num_heads: 2}
gan: {epochs: 1, iters_per_epoch: 2, batch_size: 2, patch_size: [32, 32, 16],
      warmup_epochs: 0, val_crops: 2,
      generator_params: {widths: [4, 8, 16], strides: [[2, 2, 1], [2, 2, 2]]},
      discriminator_params: {widths: [4, 8, 16], strides: [[2, 2, 1], [2, 2, 2]]}}
pretrain: {epochs: 1, iters_per_epoch: 2, batch_size: 2, projector_dims: [32, 32],
           probe_voxels: 200}
finetune: {epochs: 1, iters_per_epoch: 2, batch_size: 2, warmup_epochs: 0}
"""


INTEGRITY_CHECK = "volseg.data.check"


def _opened(stage: str, args: list[str], log: Path) -> list[tuple[Path, list[str]]]:
    """(path, volseg modules on the stack) for every file the stage opened."""
    env = dict(os.environ, OMP_NUM_THREADS="1", VOLSEG_NO_PROGRESS="1")
    done = subprocess.run(
        [sys.executable, str(RECORDER), str(log), stage, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split("\t") for line in log.read_text(encoding="utf-8").splitlines() if line]
    return [(Path(path), callers.split(",")) for path, callers in lines]


def _of_study(path: Path, sid: str) -> bool:
    return path.name.startswith((f"{sid}.", f"{sid}_"))


@pytest.mark.slow
def test_no_stage_before_predict_opens_a_test_scan(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    args = ["--config", str(cfg), "--data", str(tiny_dataset), "--run-dir", str(run)]
    opened = {s: _opened(s, args, tmp_path / f"{s}.txt") for s in ("prepare", "gan")}
    datalist = Datalist.load(datalist_path(run))
    test_ids = [s.id for s in datalist.studies_in("test")]
    train_ids = [s.id for s in datalist.studies_in(("train", "val"))]
    assert test_ids and train_ids
    for stage in ("pretrain", "finetune"):
        opened[stage] = _opened(stage, args, tmp_path / f"{stage}.txt")

    for stage, records in opened.items():
        leaked = sorted(
            {
                f"{path} (by {callers[0]})"
                for path, callers in records
                if any(_of_study(path, sid) for sid in test_ids)
                and not (stage == "prepare" and INTEGRITY_CHECK in callers)
            }
        )
        assert not leaked, f"{stage} opened test-split files: {leaked[:5]}"
    # the spy sees reads: the integrity check opened the test images, the cache the
    # training images, and the training stages read the cache
    test_images = {Path(s.image).resolve() for s in datalist.studies_in("test")}
    assert test_images <= {p.resolve() for p, c in opened["prepare"] if INTEGRITY_CHECK in c}
    by_cache = {p.resolve() for p, c in opened["prepare"] if "volseg.data.cache" in c}
    assert {Path(s.image).resolve() for s in datalist.studies_in(("train", "val"))} <= by_cache
    cache = Path(datalist.cache_dir)
    for stage in ("gan", "pretrain", "finetune"):
        assert any(cache in p.resolve().parents for p, _ in opened[stage]), stage
