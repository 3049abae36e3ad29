"""The plan of a run: the stage table, each stage's input fingerprints, what will run.

:data:`STAGES` lists the stages in order with the config sections their result depends on
and the stages they read. :func:`plan` decides from the manifests alone (nothing is
written) whether each stage will run, be skipped, be put back from ``.previous/`` or is
disabled; :func:`check_plan` runs each stage's own check before any stage runs. The
manifests (:mod:`volseg.pipeline.manifest`) are the one up-to-date rule.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from volseg import rundir
from volseg.config import Config
from volseg.errors import ConfigError, InputError, NotBuiltError
from volseg.pipeline import manifest as mf

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
        ("data",),  # the split has its own seed (data.split.seed): runs of any seed share it
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
        "predict",
        "volseg.stages.predict:run_predict_split",
        ("predict",),
        ("prepare", "finetune"),
    ),
    StageSpec(
        "evaluate",
        "volseg.stages.evaluate:run_evaluate_split",
        ("evaluate",),
        ("prepare", "predict"),
        check="volseg.stages.evaluate:check_evaluate",
    ),
)

EXTERNAL = "external"
"""Input status of an upstream stage folder that has outputs but no manifest."""


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
    """``<run_dir>/.previous``: finished stage folders kept while being replaced."""
    return rundir.previous_dir(run_dir)


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


def plan(cfg: Config, selected: Sequence[str], forced: set[str]) -> dict[str, str]:
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


def check_plan(cfg: Config, plan: dict[str, str]) -> None:
    """Each stage's own check, for every stage that will run (before any of them runs).

    The config-level checks go first, prepare's (which reads the whole dataset) last.
    """
    specs = [s for s in STAGES if plan.get(s.name) == "run"]
    for spec in sorted(specs, key=lambda s: not s.reads):
        check = spec.resolve_check()
        if check is not None:
            check(cfg)
