"""The study's painted-real-anatomy column: each cell's model scored on a painted set.

A painted set (``volseg synth --paint HEALTHY --out DIR``) holds real healthy CTs with
COVID-19-like lesions painted in and their exact truth: ``studies/CT-k/``, ``truth/``,
``lungs/``. Every cell's bundle predicts it with the set's own lung masks and no
lesion-presence gate (every painted study has lesions, so the column measures lesion
segmentation on real anatomy, not lung masking or the gate), into ``<cell>/painted/``::

    painted/pred/         masks and reports, as ``volseg predict`` writes them
    painted/evaluate/     ``volseg evaluate`` against ``truth/`` (per_case.csv, summary.json)
    painted/record.json   which model and which painted set these are (written last)

A cell whose record matches its current model and the set is not predicted again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from volseg.config import Config
from volseg.errors import InputError
from volseg.evaluation.study_report import number
from volseg.pipeline import manifest as mf
from volseg.utils import file_fingerprint

log = logging.getLogger(__name__)

PAINTED_DIR = "painted"
RECORD = "record.json"
SET_FOLDERS = ("studies", "truth", "lungs")


def check_painted_set(path: str | Path) -> Path:
    """The painted set's folder, checked for the layout ``volseg synth --paint`` writes."""
    root = Path(path).expanduser().resolve()
    for name in SET_FOLDERS:
        if not (root / name).is_dir():
            raise InputError(
                f"{root / name}: not found; --painted takes a folder written by "
                "`volseg synth --paint HEALTHY --out DIR`"
            )
    if not _study_folders(root):
        raise InputError(f"{root / 'studies'}: no category folder with studies (--painted)")
    return root


def _study_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "studies").iterdir() if p.is_dir() and any(p.iterdir()))


def _record(cfg: Config, painted: Path) -> dict[str, Any]:
    """What the painted outputs depend on: the cell's trained model and the painted set."""
    finetune = mf.read_manifest(Path(cfg.run_dir), "finetune")
    return {
        "finetune_run_id": None if finetune is None else finetune.run_id,
        "painted": str(painted),
        "painted_manifest": file_fingerprint(painted / "manifest.csv"),
        "bootstrap": cfg.evaluate.bootstrap,
    }


def score_painted(cfg: Config, painted: Path) -> Path:
    """Predict and evaluate the painted set with the cell's model; returns its folder.

    Built beside ``<cell>/painted/`` and swapped in when complete, so an interrupted run
    leaves the previous result (or none), never a half-written one.
    """
    from volseg.stages.evaluate import run_evaluate
    from volseg.stages.predict import run_predict

    run_dir = Path(cfg.run_dir)
    dest = run_dir / PAINTED_DIR
    record = _record(cfg, painted)
    if _read(dest / RECORD) == json.loads(json.dumps(record)):
        return dest
    staging = Path(tempfile.mkdtemp(prefix=f".{PAINTED_DIR}.", suffix=".tmp", dir=run_dir))
    try:
        run_predict(
            run_dir,
            _study_folders(painted),
            staging / "pred",
            lungs=painted / "lungs",
            min_involvement_pct=0.0,
        )
        run_evaluate(
            staging / "pred",
            painted / "truth",
            staging / "evaluate",
            lungs_dir=painted / "lungs",
            bootstrap=cfg.evaluate.bootstrap,
            seed=cfg.seed,
            nsd_tolerance_mm=cfg.evaluate.nsd_tolerance_mm,
        )
        (staging / RECORD).write_text(json.dumps(record, indent=2))
        old = run_dir / f".{PAINTED_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("study: %s scored on the painted set", run_dir.name)
    return dest


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def painted_current(run_dir: Path) -> bool:
    """Whether ``<cell>/painted/`` was scored with the cell's current model (a cell
    retrained by a later run without ``--painted`` keeps an older model's painted result,
    which then no longer counts)."""
    record = _read(run_dir / PAINTED_DIR / RECORD)
    finetune = mf.read_manifest(run_dir, "finetune")
    run_id = None if finetune is None else finetune.run_id
    return isinstance(record, dict) and record.get("finetune_run_id") == run_id


def painted_result(run_dir: Path) -> dict[str, Any]:
    """The cell's painted-set figures for ``study.csv`` (empty without a current painted
    run, :func:`painted_current`)."""
    if not painted_current(run_dir):
        return {}
    summary = _read(run_dir / PAINTED_DIR / "evaluate" / "summary.json")
    if not isinstance(summary, dict):
        return {}
    dice = (summary.get("metrics") or {}).get("dice") or {}
    ci = dice.get("ci95") or [None, None]
    return {
        "painted_n": (summary.get("counts") or {}).get("pairs"),
        "painted_dice_mean": number(dice.get("mean")),
        "painted_dice_ci95_low": number(ci[0]),
        "painted_dice_ci95_high": number(ci[1]),
    }
