"""The plan of a label-budget study: its cells (seed × backbone × recalibration × arm ×
label count), parsed from the command line's names and counts. Running them is
:mod:`volseg.pipeline.study`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from volseg.config import Config
from volseg.errors import ConfigError
from volseg.evaluation.study_report import ARMS
from volseg.utils import did_you_mean


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the study: a backbone × recalibration × arm × label count."""

    backbone: str
    recalibration: str
    arm: str
    n_labeled: int | None
    """None: every labeled training scan."""
    seed: int | None = None
    """The run seed of a study with ``--seeds`` (its cells live under ``seed-<k>/``);
    None: the config's seed, cells directly in the study folder."""

    @property
    def variant(self) -> str:
        """``<backbone>-<recalibration>``, the folder shared by the arms of one network."""
        return f"{self.backbone}-{self.recalibration}"

    @property
    def name(self) -> str:
        """``<arm>-n<N>`` (``n`` followed by ``all`` for every labeled scan)."""
        return f"{self.arm}-n{label_text(self.n_labeled)}"

    @property
    def folder(self) -> Path:
        """The cell's run directory, relative to the study folder."""
        return Path(seed_folder(self.seed)) / self.variant / self.name

    @property
    def applicable(self) -> bool:
        """False for 0 labels without pseudo-masks: there is nothing to train on."""
        return self.n_labeled != 0 or ARMS[self.arm].pseudo


# ----------------------------------------------------------------------------- options


def seed_folder(seed: int | None) -> str:
    """``seed-<k>`` in a study with ``--seeds``, else ``""`` (the study folder itself)."""
    return "" if seed is None else f"seed-{seed}"


def label_text(n: int | None) -> str:
    return "all" if n is None else str(n)


def _label_key(n: int | None) -> float:
    return math.inf if n is None else float(n)


def parse_labels(text: str | Iterable[str | int | None]) -> list[int | None]:
    """``"0,2,5,all"`` -> ``[0, 2, 5, None]`` (sorted, duplicates dropped, ``all`` last)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: set[int | None] = set()
    for item in items:
        if item is None or str(item).strip().lower() == "all":
            out.add(None)
            continue
        token = str(item).strip()
        try:
            value = int(token)
        except ValueError:
            raise ConfigError(
                f"--labels: {token!r} is not a number of labeled scans or 'all'"
            ) from None
        if value < 0:
            raise ConfigError(f"--labels: {value} is negative")
        out.add(value)
    if not out:
        raise ConfigError("--labels: give at least one label count, e.g. 0,2,5,all")
    return sorted(out, key=_label_key)


def parse_seeds(text: str | Iterable[str | int] | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (order kept, duplicates dropped); None stays None."""
    if text is None:
        return None
    items = [str(t).strip() for t in (text.split(",") if isinstance(text, str) else text)]
    seeds: list[int] = []
    for token in filter(None, items):
        try:
            value = int(token)
        except ValueError:
            raise ConfigError(f"--seeds: {token!r} is not a seed (a whole number >= 0)") from None
        if value < 0:
            raise ConfigError(f"--seeds: {value} is negative")
        seeds.append(value)
    if not seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. 0,1,2")
    return list(dict.fromkeys(seeds))


def parse_names(
    text: str | Iterable[str], choices: Sequence[str], option: str, *, keep_order: bool = False
) -> list[str]:
    """Comma-separated names checked against ``choices`` (with a did-you-mean).

    The result follows the order of ``choices`` unless ``keep_order``; duplicates dropped.
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    if not items:
        raise ConfigError(f"{option}: give at least one of {', '.join(choices)}")
    for item in items:
        if item not in choices:
            hint = did_you_mean(item, choices)
            raise ConfigError(f"{option}: unknown {item!r}{hint}; choose from {', '.join(choices)}")
    if keep_order:
        return list(dict.fromkeys(items))
    return [c for c in choices if c in items]


def _backbone_choices() -> list[str]:
    from volseg.models.registry import MODELS

    return sorted(MODELS)


def _recalibration_choices() -> list[str]:
    from typing import get_args

    from volseg.config import ModelConfig

    return list(get_args(ModelConfig.model_fields["recalibration"].annotation))


def plan_study(
    cfg: Config,
    labels: Sequence[int | None],
    arms: Sequence[str],
    backbones: Sequence[str] | None = None,
    recalibrations: Sequence[str] | None = None,
    seeds: Sequence[int | str] | str | None = None,
) -> list[Cell]:
    """Every cell of the study, in running order (seed, variant, label count, then arm).

    ``seeds``: run seeds to repeat the study with (each its own GAN, pretraining and
    fine-tuning; one split and one ``prepare`` for all); None: the config's seed alone.
    """
    backbones = list(backbones) if backbones else [cfg.model.name]
    recalibrations = list(recalibrations) if recalibrations else [cfg.model.recalibration]
    arms = parse_names(arms, list(ARMS), "--arms")
    recalibrations = parse_names(
        recalibrations, _recalibration_choices(), "--recalibration", keep_order=True
    )
    backbones = parse_names(backbones, _backbone_choices(), "--backbones", keep_order=True)
    labels = parse_labels(labels)
    seed_list: list[int | None] = list(parse_seeds(seeds) or [None])
    return [
        Cell(b, r, a, n, s)
        for s in seed_list
        for b in backbones
        for r in recalibrations
        for n in labels
        for a in arms
    ]


def _as_list(value: Sequence[Any] | str) -> list[Any]:
    return value.split(",") if isinstance(value, str) else list(value)


def _opt(value: Sequence[str] | str | None) -> list[str] | None:
    return None if value is None else _as_list(value)


def describe_plan(cells: Sequence[Cell]) -> str:
    """What a study will run, in stage runs (its cost in units of each stage)."""
    todo = [c for c in cells if c.applicable]
    variants = list(dict.fromkeys(c.variant for c in todo))
    seeds = list(dict.fromkeys(c.seed for c in cells))
    gan = len(seeds) if any(ARMS[c.arm].pseudo for c in todo) else 0
    pretrain = len(variants) * len(seeds) if any(ARMS[c.arm].pretrain for c in todo) else 0
    skipped = len(cells) - len(todo)
    return (
        f"{len(variants)} network(s), {len(seeds)} seed(s), {len(todo)} fine-tuning runs "
        f"(each finetune + predict + evaluate; {skipped} n/a), "
        f"1 prepare, {gan} gan, {pretrain} pretrain"
    )
