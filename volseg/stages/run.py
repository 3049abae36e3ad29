"""The pipeline orchestrator behind ``volseg run``: every stage, in order, resumable.

Stages run in one run directory (``cfg.run_dir``) in the order of :data:`STAGES`. Each
records ``<run_dir>/<stage>/manifest.json`` (:mod:`volseg.stages.manifest`). A stage is
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
import dataclasses
import fcntl
import importlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from volseg.config import Config, save_resolved
from volseg.errors import ConfigError, InputError, NotBuiltError, VolsegError
from volseg.stages import manifest as mf

log = logging.getLogger(__name__)

StageFn = Callable[[Config], Any]


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One row of the stage table."""

    name: str
    target: str | StageFn
    """``"module:function"`` imported when the stage runs, or the callable itself."""
    sections: tuple[str, ...]
    """Config sections (or top-level keys) the stage's result depends on."""
    reads: tuple[str, ...] = ()
    """Earlier stages whose outputs it reads."""
    optional: bool = False
    """Can be switched off with ``<name>.enabled: false``."""
    clear_on_config_change: bool = True
    """Start the stage in a fresh folder when re-running it after a settings change."""
    check: str | StageFn | None = None
    """Validates, writing nothing, what the stage needs from the config and from inputs
    outside the run directory; called for every stage that will run, before any runs."""

    def resolve(self) -> StageFn:
        """The stage function; a stage module that does not exist yet is NotBuiltError."""
        return self._load(self.target)

    def resolve_check(self) -> StageFn | None:
        return None if self.check is None else self._load(self.check)

    def _load(self, target: str | StageFn) -> StageFn:
        if callable(target):
            return target
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            raise NotBuiltError(f"stage {self.name}: {module_name} is not built yet") from exc
        fn = getattr(module, attr, None)
        if fn is None:
            raise NotBuiltError(f"stage {self.name}: {target} is not built yet")
        return fn


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "prepare",
        "volseg.stages.prepare:run_prepare",
        ("data", "seed"),
        clear_on_config_change=False,
        check="volseg.stages.prepare:check_prepare",
    ),
    StageSpec(
        "gan",
        "volseg.stages.gan:run_gan",
        ("data", "gan", "seed"),
        ("prepare",),
        True,
        check="volseg.stages.gan:check_gan",
    ),
    StageSpec(
        "pretrain",
        "volseg.stages.pretrain:run_pretrain",
        ("data", "model", "pretrain", "seed"),
        ("prepare",),
        True,
        check="volseg.stages.pretrain:check_pretrain",
    ),
    StageSpec(
        "finetune",
        "volseg.stages.finetune:run_finetune",
        ("data", "model", "gan", "pretrain", "finetune", "seed"),
        ("prepare", "gan", "pretrain"),
        check="volseg.stages.finetune:check_finetune",
    ),
    StageSpec(
        "predict", "volseg.stages.run:_predict_test_split", ("predict",), ("prepare", "finetune")
    ),
    StageSpec(
        "evaluate",
        "volseg.stages.run:_evaluate",
        ("evaluate",),
        ("prepare", "predict"),
        check="volseg.stages.run:_check_evaluate",
    ),
)

EXTERNAL = "external"
"""Input status of an upstream stage folder that has outputs but no manifest."""
PREVIOUS_DIR = ".previous"
"""``<run_dir>/.previous/<stage>``: a finished stage folder kept while it is being replaced."""


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


def _spec(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise ConfigError(f"unknown stage {name!r}; expected one of {', '.join(stage_names())}")


def _enabled(cfg: Config, spec: StageSpec) -> bool:
    return bool(getattr(getattr(cfg, spec.name, None), "enabled", True))


# ----------------------------------------------------------------------------- inputs


def _dataset_inputs(cfg: Config) -> dict[str, Any]:
    """``prepare``'s input: the dataset root's file listing (paths, sizes, mtimes)."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found (data.root)")
    return {"dataset": mf.listing_fingerprint(root, prune=(Path(cfg.run_dir),))}


def _upstream_fingerprint(
    cfg: Config, name: str, needed_by: str, base: Path | None = None
) -> dict[str, Any]:
    """What ``needed_by`` records about the upstream stage ``name``.

    A ``done`` (or disabled) manifest gives its fingerprint; an optional stage disabled in
    the config needs none. A folder with outputs but no manifest (the stage was run by its
    own command, e.g. under torchrun) is used as it is, fingerprinted by its file listing.
    Anything else is an :class:`InputError` saying what to run. ``base`` is the folder
    holding the stage folder (default the run directory; the set-aside copies' folder when
    planning a run that will restore them).
    """
    spec = _spec(name)
    run_dir = Path(cfg.run_dir)
    base = base or run_dir
    record = mf.read_manifest(base, name)
    if spec.optional and not _enabled(cfg, spec):
        return {"stage": name, "status": mf.STATUS_DISABLED}
    folder = base / name
    if record is not None and record.status in (mf.STATUS_DONE, mf.STATUS_DISABLED):
        current, _ = mf.config_fingerprint(cfg, spec.sections)
        if record.config_hash != current:
            log.warning(
                "%s: using %s's outputs made with different settings (run it again to update)",
                needed_by,
                name,
            )
        return record.fingerprint(_outputs_hash(folder))
    if record is None and folder.is_dir() and any(folder.iterdir()):
        log.warning(
            "%s: %s has no manifest (run outside `volseg run`); using %s as it is",
            needed_by,
            name,
            folder,
        )
        return {"stage": name, "status": EXTERNAL, "outputs": _outputs_hash(folder)}
    state = "missing" if record is None else f"'{record.status}'"
    raise InputError(
        f"{needed_by} needs the output of {name}, but {name} is {state} in {folder}; "
        f"run `volseg run --from {name}` (or the whole pipeline) first"
    )


def _outputs_hash(folder: Path) -> str | None:
    """Listing hash of a stage folder's files (its manifest aside); None if no folder."""
    if not folder.is_dir():
        return None
    return mf.listing_fingerprint(folder, exclude=(mf.MANIFEST_NAME,))["hash"]


def _stage_inputs(
    cfg: Config, spec: StageSpec, bases: dict[str, Path] | None = None
) -> dict[str, Any]:
    """The stage's input fingerprints; ``bases`` maps upstream stages to another base."""
    if not spec.reads:
        return _dataset_inputs(cfg)
    bases = bases or {}
    return {up: _upstream_fingerprint(cfg, up, spec.name, bases.get(up)) for up in spec.reads}


# ----------------------------------------------------------------------------- planning


def _previous_base(run_dir: Path) -> Path:
    return run_dir / PREVIOUS_DIR


def _restorable(
    cfg: Config, spec: StageSpec, config_hash: str, inputs_hash: str | None, forced: bool
) -> bool:
    """True when the stage's set-aside finished outputs match the current settings and
    inputs while its folder does not: a run with the settings they were made with again."""
    if forced or inputs_hash is None:
        return False
    run_dir = Path(cfg.run_dir)
    saved = mf.read_manifest(_previous_base(run_dir), spec.name)
    if saved is None or saved.status != mf.STATUS_DONE:
        return False
    if not saved.matches(config_hash, inputs_hash):
        return False
    current = mf.read_manifest(run_dir, spec.name)
    return current is None or not current.matches(config_hash, inputs_hash)


def _plan(cfg: Config, selected: Sequence[str], forced: set[str]) -> dict[str, str]:
    """What each selected stage will do, reading manifests only (nothing is written).

    ``{stage: run | skip | restore | disabled}``. Raises the :class:`InputError` of a
    stage whose upstream output is missing and not made by this run.
    """
    run_dir = Path(cfg.run_dir)
    plan: dict[str, str] = {}
    for spec in STAGES:
        if spec.name not in selected:
            continue
        if spec.optional and not _enabled(cfg, spec):
            plan[spec.name] = "disabled"
            continue
        upstream_runs = [up for up in spec.reads if plan.get(up) == "run"]
        for up in spec.reads:  # upstream outputs this run will not make must exist
            if up not in plan:
                _upstream_fingerprint(cfg, up, spec.name)
        if spec.name in forced or upstream_runs:
            plan[spec.name] = "run"
            continue
        bases = {up: _previous_base(run_dir) for up in spec.reads if plan.get(up) == "restore"}
        inputs_hash = mf.stable_hash(_stage_inputs(cfg, spec, bases))
        config_hash, _ = mf.config_fingerprint(cfg, spec.sections)
        prev = mf.read_manifest(run_dir, spec.name)
        if (
            prev is not None
            and prev.status == mf.STATUS_DONE
            and prev.matches(config_hash, inputs_hash)
        ):
            plan[spec.name] = "skip"
        elif _restorable(cfg, spec, config_hash, inputs_hash, False):
            plan[spec.name] = "restore"
        else:
            plan[spec.name] = "run"
    return plan


def _check_plan(cfg: Config, plan: dict[str, str]) -> None:
    """Each stage's own check, for every stage that will run (before any of them runs).

    The config-level checks go first, prepare's (which reads the whole dataset) last.
    """
    specs = [s for s in STAGES if plan.get(s.name) == "run"]
    for spec in sorted(specs, key=lambda s: not s.reads):
        check = spec.resolve_check()
        if check is not None:
            check(cfg)


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def _stage_lock(run_dir: Path, name: str) -> Iterator[None]:
    """Exclusive lock on one stage of a run directory (released even on a crash)."""
    lock_file = run_dir / ".locks" / f"{name}.lock"
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
    for spec in STAGES:
        if spec.name in selected and not spec.optional and not _enabled(cfg, spec):
            raise ConfigError(
                f"{spec.name}.enabled is false, but `volseg run` needs the {spec.name} stage "
                "(only gan and pretrain can be switched off)"
            )

    # Everything the run needs is checked before anything in the run directory is touched.
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: exists and is not a folder (run_dir)")
    _check_plan(cfg, _plan(cfg, selected, forced))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg)
    actions: dict[str, str] = {}
    for spec in STAGES:
        if spec.name not in selected:
            continue
        with _stage_lock(run_dir, spec.name):
            actions[spec.name] = _run_stage(cfg, spec, spec.name in forced)
    log.info("stages: %s", ", ".join(f"{k} {v}" for k, v in actions.items()))
    if "evaluate" in actions:
        log_results(run_dir)
    return actions


# ----------------------------------------------------------------------------- adapters


def _test_studies(cfg: Config) -> list[Any]:
    """The test split's studies from ``<run_dir>/prepare/datalist.json``."""
    from volseg.data.mosmed import Datalist
    from volseg.stages.prepare import datalist_path

    path = datalist_path(cfg.run_dir)
    studies = Datalist.load(path).studies_in("test")
    if not studies:
        raise InputError(
            f"{path}: the test split is empty (data.split.test_fraction = "
            f"{cfg.data.split.test_fraction}); nothing to predict or evaluate"
        )
    return studies


def _lungs_folder(cfg: Config, studies: Sequence[Any]) -> Path | None:
    """The folder holding the studies' lung masks (prepared or the dataset's), if one."""
    folders = {Path(s.lungs).parent for s in studies if s.lungs is not None}
    if len(folders) == 1 and all(s.lungs is not None for s in studies):
        return folders.pop()
    prepared = Path(cfg.run_dir) / "prepare" / "lungs"
    return prepared if prepared.is_dir() else None


def _predict_test_split(cfg: Config) -> Path:
    """Predict the test split with ``<run_dir>/finetune/model.pt`` into ``<run_dir>/predict``."""
    from volseg.bundle import BUNDLE_NAME
    from volseg.stages.predict import run_predict

    run_dir = Path(cfg.run_dir)
    bundle = run_dir / "finetune" / BUNDLE_NAME
    if not bundle.is_file():
        raise InputError(f"{bundle}: fine-tuned model not found (run the finetune stage)")
    studies = _test_studies(cfg)
    out_dir = run_dir / "predict"
    p = cfg.predict
    run_predict(
        bundle,
        [Path(s.image) for s in studies],
        out_dir,
        lungs=_lungs_folder(cfg, studies),
        use_lungs=p.restrict_to_lungs,
        write_prob=p.write_prob,
        write_types=p.write_types,
        roi_size=tuple(p.roi_size),
        overlap=p.overlap,
        sw_batch_size=p.sw_batch_size,
        tta=p.tta,
        threshold=p.threshold,
        min_component_mm3=p.min_component_mm3,
        min_involvement_pct=p.min_involvement_pct,
        lung_margin_mm=p.lung_margin_mm,
        consolidation_min_hu=p.consolidation_min_hu,
        uncertainty=p.uncertainty,
        review_disagreement=p.review_disagreement,
    )
    return out_dir


def _reference_root(cfg: Config) -> Path:
    """``data.root / data.reference``: the evaluation's reference masks."""
    return Path(cfg.data.root) / cfg.data.reference


def _check_evaluate(cfg: Config) -> None:
    """The reference folder must exist before any stage runs, not after training."""
    ref_root = _reference_root(cfg)
    if not ref_root.is_dir():
        raise InputError(f"{ref_root}: reference folder not found (data.reference)")


def _link(target: Path, link: Path) -> None:
    """Symlink ``link`` -> ``target`` (a copy where links are not supported)."""
    try:
        link.symlink_to(target.resolve())
    except OSError:
        shutil.copy2(target, link)


def _evaluation_inputs(cfg: Config, studies: Sequence[Any], folder: Path) -> tuple[Path, Path]:
    """Folders of links to the test studies' predictions and references.

    The reference folder holds masks for every split, and unlabeled test studies have no
    reference; linking just the test studies that have one keeps the report about the test
    split. A referenced study without a prediction stays visible as unmatched.
    """
    from volseg.data.layout import prediction_path

    _check_evaluate(cfg)
    ref_root = _reference_root(cfg)
    pred_root = Path(cfg.run_dir) / "predict"
    if folder.exists():
        shutil.rmtree(folder)
    pred_dir, ref_dir = folder / "pred", folder / "ref"
    pred_dir.mkdir(parents=True)
    ref_dir.mkdir(parents=True)
    for study in studies:
        ref = prediction_path(ref_root, study.id)  # <id>_mask.nii.gz in masks/ or truth/
        if not ref.is_file():
            continue
        _link(ref, ref_dir / ref.name)
        pred = prediction_path(pred_root, study.id)
        if pred.is_file():
            _link(pred, pred_dir / pred.name)
        types = pred_root / f"{study.id}_types.nii.gz"  # predict.write_types
        if types.is_file():
            _link(types, pred_dir / types.name)
    n_ref = sum(1 for _ in ref_dir.iterdir())
    if n_ref == 0:
        raise InputError(
            f"{ref_root}: no reference mask for any of the {len(studies)} test studies"
        )
    log.info("evaluating %d of %d test studies (those with a reference)", n_ref, len(studies))
    return pred_dir, ref_dir


def _evaluate(cfg: Config) -> Path:
    """Evaluate ``<run_dir>/predict`` against the references into ``<run_dir>/evaluate``."""
    from volseg.stages.evaluate import run_evaluate

    studies = _test_studies(cfg)
    out_dir = Path(cfg.run_dir) / "evaluate"
    pred_dir, ref_dir = _evaluation_inputs(cfg, studies, out_dir / "inputs")
    e = cfg.evaluate
    return run_evaluate(
        pred_dir,
        ref_dir,
        out_dir,
        lungs_dir=_lungs_folder(cfg, studies),
        resample=False,
        bootstrap=e.bootstrap,
        seed=cfg.seed,
        nsd_tolerance_mm=e.nsd_tolerance_mm,
        involvement_bins=e.involvement_bins,
        types_dir=_types_root(cfg),
    )


def _types_root(cfg: Config) -> Path | None:
    """``data.root/lesion_types`` (synthetic truth per lesion type), when there is one."""
    from volseg.data.layout import TYPES_DIR

    folder = Path(cfg.data.root) / TYPES_DIR
    return folder if folder.is_dir() else None


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
