"""The pipeline orchestrator behind ``volseg run``: every stage, in order, resumable.

Stages run in one run directory (``cfg.run_dir``) in the order of :data:`pl.STAGES`. Each
records ``<run_dir>/<stage>/manifest.json`` (:mod:`volseg.pipeline.manifest`). A stage is
skipped when its manifest says ``done`` with the same config hash (of the sections in its
table row) and the same input fingerprints (upstream stages' run ids, or the dataset's file
listing for ``prepare``). Since every completed run gets a new run id, re-running a stage
re-runs everything that reads from it.

Before anything in the run directory is touched, the whole run is planned and checked:
which stages will run (an upstream output that is missing and will not be made is an
error), and, for each of those, its ``check`` (model name and parameters against the
registry, the dataset passing ``check-data``, the reference folder, ...). A typo therefore
costs nothing, whichever stage it would have reached.

A stage re-run because its settings or inputs changed (or forced while ``done``) starts
fresh in an empty folder, but finished outputs are never deleted before their replacement
is done: a ``done`` stage folder is moved aside to ``<run_dir>/.previous/<stage>`` and
removed only when the new run of the stage finishes. If the new run fails on a bad input
or an OS error, the finished outputs are moved back at once; if it is interrupted, they
stay aside and come back by themselves when a later run asks for the settings they were
made with again. A stage found ``running`` or ``failed`` with unchanged settings is a
continuation: its folder is kept and the training stages resume from their own
checkpoints. ``prepare`` keeps its folder on a settings-only change, since the lung masks
there depend only on the images and are reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from volseg import rundir
from volseg.config import Config, save_resolved
from volseg.errors import ConfigError, InputError, VolsegError
from volseg.pipeline import manifest as mf
from volseg.pipeline import plan as pl
from volseg.pipeline.plan import (
    StageSpec,
    _enabled,
    _previous_base,
    _restorable,
    _spec,
    _stage_inputs,
    check_plan,
    plan,
    stage_names,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def _stage_lock(run_dir: Path, name: str) -> Iterator[None]:
    """Exclusive lock on one stage of a run directory (released even on a crash)."""
    lock_file = rundir.lock_path(run_dir, name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"{run_dir}: stage {name} is being run by another process ({lock_file})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fresh_reason(
    spec: StageSpec, prev: mf.Manifest | None, config_hash: str, inputs_hash: str, forced: bool
) -> str | None:
    """Why the stage must start in a fresh folder, or None to continue in it."""
    if prev is None:
        return None  # nothing recorded: whatever is there (e.g. checkpoints) is continued
    if forced and prev.status == mf.STATUS_DONE:
        return "forced"
    if prev.inputs_hash != inputs_hash:
        return "inputs changed"
    if prev.config_hash != config_hash and spec.clear_on_config_change:
        return "settings changed"
    return None


def _unlink_shared(stage_dir: Path) -> bool:
    """Remove a symlinked stage folder (a study cell's link to a shared stage) before the
    stage writes, so a cell never changes what its siblings read; True if one was removed."""
    if not stage_dir.is_symlink():
        return False
    stage_dir.unlink()
    return True


def _set_aside(stage_dir: Path, saved: Path) -> None:
    """Move a finished stage folder to ``saved`` (replacing an older one kept there)."""
    if saved.exists():
        shutil.rmtree(saved)
    saved.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stage_dir, saved)


def _put_back(stage_dir: Path, saved: Path) -> None:
    """Replace whatever is in ``stage_dir`` by the finished outputs kept in ``saved``."""
    if stage_dir.is_symlink():
        stage_dir.unlink()
    elif stage_dir.exists():
        shutil.rmtree(stage_dir)
    os.replace(saved, stage_dir)
    with contextlib.suppress(OSError):
        saved.parent.rmdir()  # only when no other stage is set aside


def _clear_for_fresh_run(spec: StageSpec, prev: mf.Manifest | None, stage_dir: Path) -> None:
    """Empty the stage folder for a fresh run; a finished one is set aside, not deleted."""
    saved = _previous_base(stage_dir.parent) / spec.name
    if prev is not None and prev.status == mf.STATUS_DONE:
        log.info("%s: previous outputs set aside in %s until this run finishes", spec.name, saved)
        _set_aside(stage_dir, saved)
    else:  # unfinished work made with other settings or inputs
        shutil.rmtree(stage_dir)


def _run_stage(cfg: Config, spec: StageSpec, forced: bool) -> str:
    """Run, skip, restore or mark one stage; returns ``ran``, ``skipped`` or ``disabled``."""
    run_dir = Path(cfg.run_dir)
    stage_dir = run_dir / spec.name
    saved = _previous_base(run_dir) / spec.name
    inputs = _stage_inputs(cfg, spec)
    inputs_hash = mf.stable_hash(inputs)
    config_hash, per_section = mf.config_fingerprint(cfg, spec.sections)
    record = mf.Manifest(
        stage=spec.name,
        status=mf.STATUS_RUNNING,
        config_hash=config_hash,
        config_sections=per_section,
        inputs=inputs,
        inputs_hash=inputs_hash,
    )

    if spec.optional and not _enabled(cfg, spec):
        prev = mf.read_manifest(run_dir, spec.name)
        if (
            prev is None
            or prev.status != mf.STATUS_DISABLED
            or not prev.matches(config_hash, inputs_hash)
        ):
            record.status = mf.STATUS_DISABLED
            record.finished = mf.now_iso()
            _unlink_shared(stage_dir)
            mf.write_manifest(run_dir, record)
        log.info("%s: disabled (%s.enabled: false)", spec.name, spec.name)
        return "disabled"

    if _restorable(cfg, spec, config_hash, inputs_hash, forced):
        log.info("%s: putting back the finished outputs made with these settings", spec.name)
        _put_back(stage_dir, saved)
    prev = mf.read_manifest(run_dir, spec.name)
    if (
        not forced
        and prev is not None
        and prev.status == mf.STATUS_DONE
        and prev.matches(config_hash, inputs_hash)
    ):
        log.info("%s: up to date (finished %s), skipped", spec.name, prev.finished)
        return "skipped"

    fn = spec.resolve()
    reason = _fresh_reason(spec, prev, config_hash, inputs_hash, forced)
    if _unlink_shared(stage_dir):
        log.info(
            "%s: %s, re-running it here (was a link to a shared stage)",
            spec.name,
            reason or "must run",
        )
    elif reason is not None and stage_dir.exists():
        log.info("%s: %s, starting fresh", spec.name, reason)
        _clear_for_fresh_run(spec, prev, stage_dir)
    elif prev is not None and prev.status in (mf.STATUS_RUNNING, mf.STATUS_FAILED):
        log.info("%s: continuing a run left '%s'", spec.name, prev.status)
    else:
        log.info("%s: running", spec.name)

    record.started = mf.now_iso()
    mf.write_manifest(run_dir, record)
    start = time.monotonic()
    try:
        output = fn(cfg)
    except BaseException as exc:
        record.status = mf.STATUS_FAILED
        record.error = f"{type(exc).__name__}: {exc}"[:2000]
        record.finished = mf.now_iso()
        record.duration_s = round(time.monotonic() - start, 3)
        mf.write_manifest(run_dir, record)
        _after_failure(spec, exc, stage_dir, saved)
        raise
    record.status = mf.STATUS_DONE
    record.finished = mf.now_iso()
    record.duration_s = round(time.monotonic() - start, 3)
    record.output = str(output if output is not None else stage_dir)
    record.run_id = mf.new_run_id()
    mf.write_manifest(run_dir, record)
    if saved.exists():  # the replacement is done: the set-aside outputs can go
        shutil.rmtree(saved)
        with contextlib.suppress(OSError):
            saved.parent.rmdir()  # only when no other stage is set aside
    log.info("%s: done in %.1f s", spec.name, record.duration_s)
    return "ran"


def _after_failure(spec: StageSpec, exc: BaseException, stage_dir: Path, saved: Path) -> None:
    """A failed run on a bad input or an OS error puts the set-aside finished outputs back;
    an interrupted one (or a bug) leaves them aside so the new run can be continued."""
    if not saved.exists():
        return
    if isinstance(exc, (VolsegError, OSError)):
        _put_back(stage_dir, saved)
        log.warning(
            "%s: failed; its previous finished outputs are back in %s", spec.name, stage_dir
        )
    else:
        log.warning(
            "%s: stopped; its previous finished outputs are kept in %s until it finishes",
            spec.name,
            saved,
        )


def run_pipeline(
    cfg: Config,
    *,
    start: str | None = None,
    only: str | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Run the pipeline in ``cfg.run_dir``; returns ``{stage: ran|skipped|disabled}``.

    ``start`` forces that stage and every later one; ``only`` considers that stage alone
    (its inputs must exist); ``force`` re-runs every selected stage. Stages otherwise run
    only when out of date. A failing stage is recorded ``failed`` and its error re-raised.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "`volseg run` runs the stages one after another in a single process; under "
            "torchrun call a stage command instead (torchrun ... -m volseg finetune ...)"
        )
    if start is not None and only is not None:
        raise ConfigError("use either --from or --only, not both")
    names = list(stage_names())
    for given in (start, only):
        if given is not None:
            _spec(given)
    selected = [only] if only is not None else names
    if force:
        forced = set(selected)
    elif start is not None:
        forced = set(names[names.index(start) :])
    else:
        forced = set()
    for spec in pl.STAGES:
        if spec.name in selected and not spec.optional and not _enabled(cfg, spec):
            raise ConfigError(
                f"{spec.name}.enabled is false, but `volseg run` needs the {spec.name} stage "
                "(only gan and pretrain can be switched off)"
            )

    # Everything the run needs is checked before anything in the run directory is touched.
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: exists and is not a folder (run_dir)")
    check_plan(cfg, plan(cfg, selected, forced))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg)
    actions: dict[str, str] = {}
    for spec in pl.STAGES:
        if spec.name not in selected:
            continue
        with _stage_lock(run_dir, spec.name):
            actions[spec.name] = _run_stage(cfg, spec, spec.name in forced)
    log.info("stages: %s", ", ".join(f"{k} {v}" for k, v in actions.items()))
    if "evaluate" in actions:
        log_results(run_dir)
    return actions


# ----------------------------------------------------------------------------- summary


def _fmt(value: Any, scale: float = 1.0, unit: str = "", digits: int = 3) -> str:
    """A number for the log line; missing or NaN values as ``n/a``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.{digits}f}{unit}"


def log_results(run_dir: str | Path) -> dict[str, Any] | None:
    """Log the test-split headline figures from ``<run_dir>/evaluate/summary.json``.

    Returns the figures logged (None when there is no readable summary).
    """
    folder = Path(run_dir) / "evaluate"
    path = folder / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: no readable evaluation summary (%s)", path, exc)
        return None
    metrics = summary.get("metrics") or {}

    def mean(name: str) -> Any:
        return (metrics.get(name) or {}).get("mean")

    grades = summary.get("grade_confusion") or {}
    figures = {
        "cases": (summary.get("counts") or {}).get("pairs"),
        "dice": mean("dice"),
        "sensitivity": mean("sensitivity"),
        "abs_involvement_error_pct": mean("abs_involvement_error_pct"),
        "grade_accuracy": grades.get("accuracy"),
        "report": str(folder / "report.md"),
    }
    log.info(
        "test split (%s cases): Dice %s, sensitivity %s, involvement error %s, "
        "CT-grade accuracy %s",
        figures["cases"],
        _fmt(figures["dice"]),
        _fmt(figures["sensitivity"]),
        _fmt(figures["abs_involvement_error_pct"], unit=" pp", digits=1),
        _fmt(figures["grade_accuracy"], 100.0, " %", digits=0),
    )
    log.info("report: %s", figures["report"])
    return figures
