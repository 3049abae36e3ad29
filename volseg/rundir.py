"""The run-directory layout: where every stage writes and reads, in one place.

::

    <run_dir>/config.yaml                  the resolved config
    <run_dir>/prepare/datalist.json        studies and their split; prepare/lungs/
    <run_dir>/cache/<settings_hash>/       the preprocessing cache (volseg.data.cache)
    <run_dir>/gan/pseudo_masks/, qc.csv    pseudo-masks and their QC
    <run_dir>/pretrain/encoder.pt          Barlow Twins encoder
    <run_dir>/finetune/model.pt            the model bundle
    <run_dir>/predict/, evaluate/          test-split predictions and their report
    <run_dir>/<stage>/manifest.json        each stage's run record (volseg.pipeline.manifest)
    <run_dir>/.previous/<stage>            a finished stage kept while it is being replaced
    <run_dir>/.locks/<stage>.lock          one process per stage

Stages and the pipeline (``run``, ``study``) ask this module for paths instead of joining
names themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from volseg.errors import InputError

PREPARE_DIR = "prepare"
DATALIST = "datalist.json"
LUNGS_DIR = "lungs"
CACHE_DIR = "cache"
PSEUDO_DIR = "pseudo_masks"
QC_FILE = "qc.csv"
ENCODER_FILE = "encoder.pt"
BUNDLE_NAME = "model.pt"
PREVIOUS_DIR = ".previous"
LOCKS_DIR = ".locks"


def stage_path(run_dir: str | Path, stage: str) -> Path:
    """``<run_dir>/<stage>`` (not created)."""
    return Path(run_dir) / stage


def stage_dir(cfg: Any, stage: str) -> Path:
    """``<run_dir>/<stage>`` of a config, created."""
    path = stage_path(cfg.run_dir, stage)
    path.mkdir(parents=True, exist_ok=True)
    return path


def datalist_path(run_dir: str | Path) -> Path:
    """Where ``prepare`` writes the datalist of a run."""
    return Path(run_dir) / PREPARE_DIR / DATALIST


def lungs_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/prepare/lungs``: the lung masks ``prepare`` computes."""
    return Path(run_dir) / PREPARE_DIR / LUNGS_DIR


def cache_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CACHE_DIR


def pseudo_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/gan/pseudo_masks``: where fine-tuning finds the pseudo-masks."""
    return Path(run_dir) / "gan" / PSEUDO_DIR


def qc_path(run_dir: str | Path) -> Path:
    """``<run_dir>/gan/qc.csv``."""
    return Path(run_dir) / "gan" / QC_FILE


def encoder_path(run_dir: str | Path) -> Path:
    """Where the pretrain stage writes the Barlow Twins encoder."""
    return Path(run_dir) / "pretrain" / ENCODER_FILE


def bundle_path(run_dir: str | Path) -> Path:
    """``<run_dir>/finetune/model.pt``: the model bundle ``predict`` loads."""
    return Path(run_dir) / "finetune" / BUNDLE_NAME


def previous_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PREVIOUS_DIR


def lock_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / LOCKS_DIR / f"{stage}.lock"


def test_studies(cfg: Any) -> list[Any]:
    """The test split's studies from ``<run_dir>/prepare/datalist.json``."""
    from volseg.data.mosmed import Datalist

    path = datalist_path(cfg.run_dir)
    studies = Datalist.load(path).studies_in("test")
    if not studies:
        raise InputError(
            f"{path}: the test split is empty (data.split.test_fraction = "
            f"{cfg.data.split.test_fraction}); nothing to predict or evaluate"
        )
    return studies


def lungs_folder(cfg: Any, studies: Any) -> Path | None:
    """The folder holding the studies' lung masks (prepared or the dataset's), if one."""
    folders = {Path(s.lungs).parent for s in studies if s.lungs is not None}
    if len(folders) == 1 and all(s.lungs is not None for s in studies):
        return folders.pop()
    prepared = lungs_dir(cfg.run_dir)
    return prepared if prepared.is_dir() else None


test_studies.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
