"""The label-budget study's report: its CSV, markdown tables and plot.

Rows are the study's cells (:func:`volseg.pipeline.study.cell_result`): one per seed ×
backbone × recalibration × arm × label count, with its test-split Dice and status. The
tables and the plot pool the seeds (:func:`pool_seeds`); the paired per-scan comparison is
:mod:`volseg.evaluation.study_paired`. The study itself (configs, shared stages, running)
is :mod:`volseg.pipeline.study`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from volseg.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

COMPARE_MAX_LABELS = 5
"""The comparison table across backbones uses the largest label count up to this."""

STATUS_DONE = "done"
STATUS_NA = "n/a"
STATUS_FAILED = "failed"
STATUS_MISSING = "missing"

CSV_COLUMNS = (
    "seed",
    "backbone",
    "recalibration",
    "arm",
    "n_labeled",
    "status",
    "n_labeled_used",
    "n_labeled_available",
    "n_test",
    "dice_mean",
    "dice_sd",
    "dice_ci95_low",
    "dice_ci95_high",
    "sensitivity_mean",
    "abs_involvement_error_pct_mean",
    "painted_n",
    "painted_dice_mean",
    "painted_dice_ci95_low",
    "painted_dice_ci95_high",
    "run_dir",
    "error",
)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the study: which of the two few-label aids it uses."""

    name: str
    pretrain: bool
    pseudo: bool
    description: str


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("scratch", False, False, "random init, true masks only"),
        Arm("pretrain", True, False, "Barlow Twins encoder, true masks only"),
        Arm("pseudo", False, True, "random init, true masks + GAN pseudo-masks"),
        Arm("full", True, True, "Barlow Twins encoder, true masks + GAN pseudo-masks"),
    )
}


def _dice_cell(row: Mapping[str, Any]) -> str:
    """``0.812 ± 0.050``; ``n/a``, ``failed`` or ``missing`` when there is no figure."""
    if row.get("status") != STATUS_DONE or row.get("dice_mean") is None:
        return str(row.get("status") or STATUS_MISSING)
    text = f"{row['dice_mean']:.3f}"
    if row.get("dice_sd") is not None:
        text += f" ± {row['dice_sd']:.3f}"
    return text


def number(value: Any) -> float | None:
    """A finite number as float, else None."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if number(value) is None else f"{value:.{digits}f}"


def _variants(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["backbone"], r["recalibration"]) for r in rows))


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    present = set(values)
    return [v for v in order if v in present]


def _label_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(
        dict.fromkeys(r["n_labeled"] for r in rows),
        key=lambda t: math.inf if t == "all" else int(t),
    )


def comparison_choice(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """``(arm, label)`` of the cross-network table: ``full`` (or the richest arm run) at
    the largest label count up to :data:`COMPARE_MAX_LABELS` (else the smallest)."""
    arms = _ordered((r["arm"] for r in rows), list(ARMS))
    labels = _label_columns(rows)
    small = [t for t in labels if t != "all" and int(t) <= COMPARE_MAX_LABELS]
    return arms[-1], (small[-1] if small else labels[0])


POOLED_MEANS = (
    "dice_mean",
    "sensitivity_mean",
    "abs_involvement_error_pct_mean",
    "painted_dice_mean",
)
"""Figures averaged over the seeds of a cell (each seed's test-split mean)."""


def _key(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (row["backbone"], row["recalibration"], row["arm"], row["n_labeled"])


def pool_seeds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell across seeds: the mean over seeds of each seed's mean, ``dice_sd``
    the sd across seeds and ``n_seeds`` how many finished; single-seed rows are kept."""
    if len({str(r.get("seed", "")) for r in rows}) <= 1:
        return [dict(r, n_seeds=1 if r.get("status") == STATUS_DONE else 0) for r in rows]
    groups: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    pooled = []
    for group in groups.values():
        done = [r for r in group if r.get("status") == STATUS_DONE]
        row: dict[str, Any] = {k: group[0][k] for k in ("backbone", "recalibration", "arm")}
        row.update(n_labeled=group[0]["n_labeled"], seed="pooled", n_seeds=len(done))
        if not done:
            row["status"] = group[0].get("status")
            pooled.append(row)
            continue
        row["status"] = STATUS_DONE
        for name in POOLED_MEANS:
            values = [v for v in (number(r.get(name)) for r in done) if v is not None]
            row[name] = sum(values) / len(values) if values else None
        dice = [number(r.get("dice_mean")) for r in done]
        if len(dice) > 1 and None not in dice:
            mean = sum(dice) / len(dice)
            row["dice_sd"] = math.sqrt(sum((d - mean) ** 2 for d in dice) / (len(dice) - 1))
        for name in ("n_test", "n_labeled_used", "n_labeled_available", "painted_n"):
            row[name] = done[0].get(name)
        pooled.append(row)
    return pooled


def render_markdown(rows: Sequence[Mapping[str, Any]], study_dir: Path | None = None) -> str:
    """``study.md``: a Dice table per network (arms × label counts) and a comparison.

    ``rows`` are :func:`pool_seeds` rows: with several seeds the cells are means over
    seeds ± the sd across seeds, and the CIs are in the paired section instead.
    """
    labels = _label_columns(rows)
    arms = _ordered((r["arm"] for r in rows), list(ARMS))
    by_key = {_key(r): r for r in rows}
    seeds = max((int(r.get("n_seeds") or 0) for r in rows), default=0)
    spread = (
        f"mean over {seeds} seeds ± sd across seeds"
        if any(r.get("seed") == "pooled" for r in rows)
        else "mean ± sd over test cases"
    )
    lines = ["# Label-budget study", ""]
    if study_dir is not None:
        lines += [f"Study directory: `{study_dir}`", ""]
    lines += [
        f"Test-split Dice, {spread}, by arm (rows) and number of labeled "
        "training scans (columns); `n/a`: 0 labels without pseudo-masks has nothing to "
        "train on. Arms: "
        + "; ".join(f"**{a}**: {ARMS[a].description}" for a in arms)
        + ". Every run uses the same patient-level split.",
        "",
    ]
    for backbone, recal in _variants(rows):
        lines += [f"## {backbone}, recalibration {recal}", ""]
        lines += ["| arm | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        for arm in arms:
            cells = [_dice_cell(by_key.get((backbone, recal, arm, t), {})) for t in labels]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        n_test = {r.get("n_test") for r in rows if r["backbone"] == backbone and r.get("n_test")}
        if n_test:
            lines += ["", f"Test cases: {', '.join(str(n) for n in sorted(n_test))}."]
        lines.append("")
        lines += _painted_table(by_key, backbone, recal, arms, labels)
    arm, label = comparison_choice(rows)
    lines += [
        f"## Networks compared ({arm} arm, {label} labeled scans)",
        "",
        "| backbone | recalibration | Dice | 95 % CI | sensitivity | "
        "abs. involvement error (pp) | test cases |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backbone, recal in _variants(rows):
        r = by_key.get((backbone, recal, arm, label), {})
        ci = (
            f"{r['dice_ci95_low']:.3f}–{r['dice_ci95_high']:.3f}"
            if r.get("dice_ci95_low") is not None and r.get("dice_ci95_high") is not None
            else "–"
        )
        lines.append(
            f"| {backbone} | {recal} | {_dice_cell(r)} | {ci} | "
            f"{_fmt(r.get('sensitivity_mean'))} | "
            f"{_fmt(r.get('abs_involvement_error_pct_mean'), 1)} | {r.get('n_test') or '–'} |"
        )
    failed = [r for r in rows if r.get("status") == STATUS_FAILED]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{r['run_dir']}`: {r.get('error')}" for r in failed]
    return "\n".join(lines) + "\n"


def _painted_table(
    by_key: Mapping[tuple[str, str, str, str], Mapping[str, Any]],
    backbone: str,
    recal: str,
    arms: Sequence[str],
    labels: Sequence[str],
) -> list[str]:
    """The painted-real-anatomy Dice of one network (no lines when it was not scored)."""
    cells = {
        (arm, t): number(by_key.get((backbone, recal, arm, t), {}).get("painted_dice_mean"))
        for arm in arms
        for t in labels
    }
    if all(v is None for v in cells.values()):
        return []
    n = {by_key[k].get("painted_n") for k in by_key if k[:2] == (backbone, recal)} - {None}
    lines = [
        "Painted real anatomy (`--painted`"
        + (f", {n.pop()} studies" if len(n) == 1 else "")
        + "): mean Dice",
        "",
        "| arm | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(_fmt(cells[(arm, t)]) for t in labels) + " |")
    return [*lines, ""]


def plot_study(rows: Sequence[Mapping[str, Any]], dest: Path) -> Path:
    """``study.png``: test Dice vs labeled scans, a line per arm, a panel per network.

    Label counts are evenly spaced categories (``all`` last); error bars are the 95 %
    bootstrap CI where evaluate gave one.
    """
    from matplotlib.figure import Figure

    labels = _label_columns(rows)
    arms = _ordered((r["arm"] for r in rows), list(ARMS))
    variants = _variants(rows)
    ncols = min(3, len(variants))
    nrows = math.ceil(len(variants) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.6 * nrows))
    by_key = {_key(r): r for r in rows}
    xs = list(range(len(labels)))
    for i, (backbone, recal) in enumerate(variants):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for arm in arms:
            ys, lo, hi = [], [], []
            for t in labels:
                r = by_key.get((backbone, recal, arm, t), {})
                y = r.get("dice_mean") if r.get("status") == STATUS_DONE else None
                ys.append(math.nan if y is None else y)
                low, high = r.get("dice_ci95_low"), r.get("dice_ci95_high")
                ok = y is not None and low is not None and high is not None
                lo.append(y - low if ok else 0.0)
                hi.append(high - y if ok else 0.0)
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=arm)
        ax.set_xticks(xs, [_tick(t, rows, backbone, recal) for t in labels])
        ax.set_xlabel("labeled training scans")
        ax.set_ylabel("test Dice")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{backbone}, recalibration {recal}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(dest)


def _tick(label: str, rows: Sequence[Mapping[str, Any]], backbone: str, recal: str) -> str:
    """``all`` becomes ``all (k)`` when the runs recorded how many labeled scans exist."""
    if label != "all":
        return label
    counts = {
        r.get("n_labeled_available")
        for r in rows
        if r["backbone"] == backbone and r["recalibration"] == recal and r["n_labeled"] == "all"
    } - {None}
    return f"all ({counts.pop()})" if len(counts) == 1 else label


def write_results(
    study_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    categories: Mapping[str, str] | None = None,
    n_resamples: int = 2000,
) -> dict[str, Path]:
    """Write ``study.csv``, ``study.md``, ``study.png`` and, when the study has the
    reference arm, ``study_paired.csv`` / ``.png`` atomically; returns their paths.

    ``categories``: test study id -> MosMed category, for the paired strata.
    """
    from volseg.evaluation.report import per_case_csv
    from volseg.evaluation.study_paired import (
        PAIRED_COLUMNS,
        paired_rows,
        plot_paired,
        render_paired_markdown,
    )

    pooled = pool_seeds(rows)
    prows = paired_rows(rows, categories or {}, n_resamples)
    markdown = render_markdown(pooled, study_dir)
    if prows:
        markdown += "\n" + render_paired_markdown(prows)
    paths = {
        "csv": write_text_atomic(study_dir / "study.csv", per_case_csv(rows, CSV_COLUMNS)),
        "png": plot_study(pooled, study_dir / "study.png"),
        "md": write_text_atomic(study_dir / "study.md", markdown),
    }
    if prows:
        paired_csv = per_case_csv(prows, PAIRED_COLUMNS)
        paths["paired_csv"] = write_text_atomic(study_dir / "study_paired.csv", paired_csv)
        paths["paired_png"] = plot_paired(prows, study_dir / "study_paired.png")
    log.info("study: results in %s", ", ".join(str(p) for p in paths.values()))
    return paths
