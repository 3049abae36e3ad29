"""The label-budget study behind ``volseg study``: what each stage adds, per label count.

Four arms fine-tune on the same patient-level split (one shared ``prepare``):

=========  ====================================  ===================================
arm        initialisation                        training labels
=========  ====================================  ===================================
scratch    random                                N true masks
pretrain   Barlow Twins encoder                  N true masks
pseudo     random                                N true masks + GAN pseudo-masks
full       Barlow Twins encoder                  N true masks + GAN pseudo-masks
=========  ====================================  ===================================

With 0 labels only the arms with pseudo-masks can train; the others are recorded ``n/a``.

Layout of the study directory (``cfg.run_dir``)::

    shared/                         prepare (+ cache/) and gan: run once per study, as
                                    neither depends on the network
    <backbone>-<recal>/base/        pretrain: run once per backbone × recalibration
    <backbone>-<recal>/<arm>-n<N>/  finetune, predict, evaluate of one arm at N labels;
                                    prepare, cache, gan, pretrain are relative symlinks to
                                    the folders above (only those the arm uses)
    study.csv, study.md, study.png  the results
    study_paired.csv, .png          per-scan differences to the reference arm

With ``seeds``, everything but ``shared/prepare`` and ``shared/cache`` (one split for all
seeds) is repeated under ``seed-<k>/`` for each seed: its own GAN, pretraining and cells.
With ``painted`` (a set written by ``volseg synth --paint``), each cell's model also
predicts that set (``<cell>/painted/``: lesions painted into real anatomy, exact truth).

Every folder is an ordinary run directory driven by the orchestrator
(:func:`volseg.pipeline.run.run_pipeline`), so its manifests make the study resumable: a
re-run skips every stage that finished with the same settings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from volseg.config import Config
from volseg.errors import ConfigError, InputError, NotBuiltError, VolsegError
from volseg.evaluation.study_paired import datalist_categories
from volseg.evaluation.study_report import (  # noqa: F401  (the study's names)
    ARMS,
    COMPARE_MAX_LABELS,
    CSV_COLUMNS,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_MISSING,
    STATUS_NA,
    Arm,
    comparison_choice,
    number,
    plot_study,
    render_markdown,
    write_results,
)
from volseg.pipeline import manifest as mf
from volseg.pipeline.study_painted import check_painted_set, painted_result, score_painted
from volseg.pipeline.study_plan import (  # noqa: F401  (the study's names)
    Cell,
    _as_list,
    _label_key,
    _opt,
    describe_plan,
    label_text,
    parse_labels,
    parse_names,
    parse_seeds,
    plan_study,
    seed_folder,
)

log = logging.getLogger(__name__)

SHARED_DIR = "shared"
BASE_DIR = "base"
CACHE_DIR = "cache"
ARM_STAGES = ("finetune", "predict", "evaluate")


class StudyIncomplete(VolsegError):
    """Some runs of the study failed; the others' results were still written."""


# ----------------------------------------------------------------------------- configs


def _derive(cfg: Config, changes: Mapping[str, Any]) -> Config:
    """A validated copy of ``cfg`` with dotted keys (``"finetune.init"``) replaced."""
    tree = cfg.model_dump()
    for key, value in changes.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"study: invalid derived config ({exc.errors()[0]['msg']})") from None


def _model_changes(cfg: Config, backbone: str, recalibration: str) -> dict[str, Any]:
    """The network of a variant: ``model.params`` are keyed by backbone, so each variant
    builds with its own entry (or the backbone's defaults when the config has none)."""
    return {"model.name": backbone, "model.recalibration": recalibration}


def _seed_changes(seed: int | None) -> dict[str, Any]:
    return {} if seed is None else {"seed": seed}


def shared_config(cfg: Config, study_dir: Path, seed: int | None = None) -> Config:
    """The config of ``[seed-<k>/]shared/`` (prepare and gan; gan enabled)."""
    folder = study_dir / seed_folder(seed) / SHARED_DIR
    changes = {"run_dir": folder, "gan.enabled": True, "pretrain.enabled": False}
    return _derive(cfg, {**changes, **_seed_changes(seed)})


def base_config(
    cfg: Config, study_dir: Path, backbone: str, recalibration: str, seed: int | None = None
) -> Config:
    """The config of ``[seed-<k>/]<variant>/base/`` (pretrain, enabled, for this network)."""
    folder = study_dir / seed_folder(seed) / f"{backbone}-{recalibration}" / BASE_DIR
    changes = {"run_dir": folder, "gan.enabled": True, "pretrain.enabled": True}
    changes.update(_model_changes(cfg, backbone, recalibration))
    return _derive(cfg, {**changes, **_seed_changes(seed)})


def arm_config(cfg: Config, study_dir: Path, cell: Cell) -> Config:
    """The config of one cell: its network, arm switches, seed and ``finetune.n_labeled``.

    ``gan`` and ``pretrain`` sections differ from the shared runs' only in ``enabled``, and
    only when the arm does not use them, so the linked stages' config hashes match.
    """
    arm = ARMS[cell.arm]
    changes: dict[str, Any] = {
        **_seed_changes(cell.seed),
        "run_dir": study_dir / cell.folder,
        "gan.enabled": arm.pseudo,
        "pretrain.enabled": arm.pretrain,
        "finetune.use_pseudo": arm.pseudo,
        "finetune.init": "pretrained" if arm.pretrain else "scratch",
        "finetune.n_labeled": cell.n_labeled,
    }
    changes.update(_model_changes(cfg, cell.backbone, cell.recalibration))
    return _derive(cfg, changes)


# ----------------------------------------------------------------------------- running


def _link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to the folder ``target`` (kept if already so)."""
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == rel:
            return
        link.unlink()
    elif link.exists():
        raise InputError(
            f"{link}: a folder where the study expects a link to {target}; "
            "remove it to let the study re-create the link"
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(rel, target_is_directory=True)
    except OSError as exc:
        raise InputError(f"{link}: cannot create a symlink to {target} ({exc})") from exc


def _stage_spec(name: str) -> Any:
    from volseg.pipeline import plan as orch

    for spec in orch.STAGES:
        if spec.name == name:
            return spec
    raise KeyError(name)


def _check_linked(cfg: Config, stages: Sequence[str]) -> None:
    """Each linked stage must be ``done`` with the settings this run would give it.

    Then the orchestrator reads it as up to date and never re-runs it through the link
    (which would write into the shared folder).
    """
    run_dir = Path(cfg.run_dir)
    for name in stages:
        record = mf.read_manifest(run_dir, name)
        current, _ = mf.config_fingerprint(cfg, _stage_spec(name).sections)
        if record is None or record.status != mf.STATUS_DONE or record.config_hash != current:
            state = "missing" if record is None else record.status
            raise InputError(
                f"{run_dir / name}: linked stage is {state} or made with other settings; "
                "re-run the study to rebuild the shared stages"
            )


def _link_stages(cfg: Config, targets: Mapping[str, Path]) -> None:
    """Link ``<run_dir>/<name>`` to each target folder and check the linked stages."""
    run_dir = Path(cfg.run_dir)
    for name, target in targets.items():
        _link(run_dir / name, target)
    _check_linked(cfg, [n for n in targets if n != CACHE_DIR])


def _run_stages(cfg: Config, stages: Sequence[str]) -> dict[str, str]:
    """Run (or skip, when up to date) each stage alone, in order, in ``cfg.run_dir``."""
    from volseg.pipeline.run import run_pipeline

    actions: dict[str, str] = {}
    for name in stages:
        actions.update(run_pipeline(cfg, only=name))
    return actions


def _check_study_dir(cfg: Config) -> Path:
    study_dir = Path(cfg.run_dir).resolve()
    root = Path(cfg.data.root).resolve()
    if study_dir == root or root in study_dir.parents:
        raise ConfigError(
            f"{study_dir}: the study directory (run_dir) must be outside data.root ({root}); "
            "the dataset's file listing would otherwise change with every run"
        )
    return study_dir


def run_study(
    cfg: Config,
    labels: Sequence[int | None] | str,
    arms: Sequence[str] | str = tuple(ARMS),
    backbones: Sequence[str] | str | None = None,
    recalibrations: Sequence[str] | str | None = None,
    seeds: Sequence[int | str] | str | None = None,
    painted: str | Path | None = None,
) -> Path:
    """Run the label-budget study in ``cfg.run_dir``; returns that folder.

    ``labels``: numbers of labeled training scans (None or ``"all"``: every one);
    ``arms``: names from :data:`ARMS`; ``backbones`` / ``recalibrations``: networks and
    recalibration modules to compare (default: the config's); ``seeds``: run seeds to
    repeat every cell with (default: the config's seed alone); ``painted``: a set from
    ``volseg synth --paint`` each cell's model is also scored on. Writes ``study.csv``,
    ``study.md``, ``study.png`` and the paired comparison. A cell whose stages raise a
    user-level error is recorded ``failed`` and the others still run; then
    :class:`StudyIncomplete` is raised after the results are written.
    """
    cells = plan_study(
        cfg, _as_list(labels), _as_list(arms), _opt(backbones), _opt(recalibrations), seeds
    )
    study_dir = _check_study_dir(cfg)
    painted_dir = None if painted is None else check_painted_set(painted)
    todo = [c for c in cells if c.applicable]
    log.info("study: %s", describe_plan(cells))
    study_dir.mkdir(parents=True, exist_ok=True)

    _run_stages(shared_config(cfg, study_dir), ["prepare"])
    common: dict[str, Path] = {"prepare": study_dir / SHARED_DIR / "prepare"}
    if (study_dir / SHARED_DIR / CACHE_DIR).is_dir():
        common[CACHE_DIR] = study_dir / SHARED_DIR / CACHE_DIR

    errors: dict[Cell, str] = {}
    for seed in dict.fromkeys(c.seed for c in cells):
        seed_cells = [c for c in todo if c.seed == seed]
        errors.update(_run_seed(cfg, study_dir, seed, seed_cells, common, painted_dir))

    rows = collect_results(study_dir, cells, errors)
    write_results(study_dir, rows, datalist_categories(study_dir / SHARED_DIR / "prepare"))
    if errors:
        first, message = next(iter(errors.items()))
        raise StudyIncomplete(
            f"{len(errors)} of {len(todo)} study runs failed (see {study_dir / 'study.md'}); "
            f"first: {first.folder}: {message}"
        )
    return study_dir


def _run_seed(
    cfg: Config,
    study_dir: Path,
    seed: int | None,
    cells: Sequence[Cell],
    common: Mapping[str, Path],
    painted_dir: Path | None,
) -> dict[Cell, str]:
    """The GAN, pretraining and cells of one seed; returns the failed cells' errors."""
    shared = shared_config(cfg, study_dir, seed)
    if seed is not None:  # the seed's shared/ links the one prepare, then runs its own gan
        _link_stages(shared, common)
    if any(ARMS[c.arm].pseudo for c in cells):
        _run_stages(shared, ["gan"])
    errors: dict[Cell, str] = {}
    for variant in dict.fromkeys((c.backbone, c.recalibration) for c in cells):
        base = base_config(cfg, study_dir, *variant, seed)
        if any(ARMS[c.arm].pretrain for c in cells):
            _link_stages(base, common)
            _run_stages(base, ["pretrain"])
        for cell in (c for c in cells if (c.backbone, c.recalibration) == variant):
            arm = ARMS[cell.arm]
            run_cfg = arm_config(cfg, study_dir, cell)
            targets = dict(common)
            if arm.pseudo:
                targets["gan"] = Path(shared.run_dir) / "gan"
            if arm.pretrain:
                targets["pretrain"] = Path(base.run_dir) / "pretrain"
            log.info("study: %s", cell.folder)
            try:
                _link_stages(run_cfg, targets)
                _run_stages(run_cfg, ARM_STAGES)
                if painted_dir is not None:
                    score_painted(run_cfg, painted_dir)
            except NotBuiltError:
                raise
            except VolsegError as exc:
                log.error("study: %s failed: %s", cell.folder, exc)
                errors[cell] = str(exc)
    return errors


# ----------------------------------------------------------------------------- results


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cell_result(study_dir: Path, cell: Cell, error: str | None = None) -> dict[str, Any]:
    """One CSV row: the cell's test-split figures from its ``evaluate/summary.json``."""
    run_dir = study_dir / cell.folder
    row: dict[str, Any] = {
        "seed": "" if cell.seed is None else cell.seed,
        "backbone": cell.backbone,
        "recalibration": cell.recalibration,
        "arm": cell.arm,
        "n_labeled": label_text(cell.n_labeled),
        "run_dir": str(run_dir),
    }
    if not cell.applicable:
        row["status"] = STATUS_NA
        return row
    record = mf.read_manifest(run_dir, "evaluate")
    summary = _read_json(run_dir / "evaluate" / "summary.json")
    if error is not None or record is None or record.status != mf.STATUS_DONE or not summary:
        row["status"] = STATUS_FAILED if error is not None else STATUS_MISSING
        row["error"] = error
        return row
    metrics = summary.get("metrics") or {}
    dice = metrics.get("dice") or {}
    ci = dice.get("ci95") or [None, None]
    row.update(
        status=STATUS_DONE,
        n_test=(summary.get("counts") or {}).get("pairs"),
        dice_mean=number(dice.get("mean")),
        dice_sd=number(dice.get("sd")),
        dice_ci95_low=number(ci[0]),
        dice_ci95_high=number(ci[1]),
        sensitivity_mean=number((metrics.get("sensitivity") or {}).get("mean")),
        abs_involvement_error_pct_mean=number(
            (metrics.get("abs_involvement_error_pct") or {}).get("mean")
        ),
    )
    row.update(painted_result(run_dir))
    labeled = _read_json(run_dir / "finetune" / "labeled.json") or {}
    if isinstance(labeled.get("ids"), list):
        row["n_labeled_used"] = len(labeled["ids"])
        row["n_labeled_available"] = labeled.get("n_available")
        if cell.n_labeled is not None and len(labeled["ids"]) < cell.n_labeled:
            log.warning(
                "study: %s used %d labeled scans (only %s available)",
                cell.folder,
                len(labeled["ids"]),
                labeled.get("n_available"),
            )
    return row


def collect_results(
    study_dir: Path, cells: Sequence[Cell], errors: Mapping[Cell, str] | None = None
) -> list[dict[str, Any]]:
    """The CSV rows of every cell, in plan order."""
    errors = errors or {}
    return [cell_result(study_dir, c, errors.get(c)) for c in cells]
