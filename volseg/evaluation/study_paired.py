"""Paired per-scan comparison of the study's arms against a reference arm (``scratch``).

Every arm predicts the same test scans (one split), so the fair question is scan by scan:
how much higher is this arm's Dice than scratch's on the same scan? For each network,
label count and arm, the per-scan difference is taken within each seed (the two cells of
one seed), averaged over the seeds where both cells finished, and summarised per stratum
of the scan's MosMed category, ``all``, ``CT-0``, ``CT-1`` and ``CT-2+`` (CT-2 to CT-4),
plus ``painted`` for the painted-real-anatomy set when the study has one. The 95 % CI is
a percentile bootstrap over scans of the seed-averaged differences, so it reflects how
much the answer depends on which scans were tested; the per-seed means beside it show how
much it depends on the training seed.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.evaluation.stats import bootstrap_ci
from volseg.io import atomic_path

log = logging.getLogger(__name__)

REFERENCE_ARM = "scratch"
TEST_STRATA = ("all", "CT-0", "CT-1", "CT-2+")
PAINTED_STRATUM = "painted"
PAINTED_FOLDER = "painted/evaluate"
"""A cell's evaluation of the painted set (``volseg.pipeline.study_painted``)."""
PAIRED_COLUMNS = (
    "backbone",
    "recalibration",
    "n_labeled",
    "arm",
    "reference",
    "stratum",
    "n_scans",
    "n_seeds",
    "reference_dice",
    "arm_dice",
    "diff_mean",
    "diff_ci95_low",
    "diff_ci95_high",
    "ci_excludes_zero",
    "diff_per_seed",
)


def stratum_of(category: str) -> str:
    """``CT-0`` and ``CT-1`` are their own strata; CT-2, CT-3 and CT-4 pool as ``CT-2+``."""
    return category if category in ("CT-0", "CT-1") else "CT-2+"


def case_dice(per_case: Path) -> dict[str, float]:
    """``case_id`` -> Dice from an evaluate ``per_case.csv`` (empty when unreadable)."""
    try:
        with per_case.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {}
    out: dict[str, float] = {}
    for row in rows:
        try:
            value = float(row.get("dice") or "nan")
        except ValueError:
            continue
        if math.isfinite(value):
            out[row["case_id"]] = value
    return out


def datalist_categories(prepare_dir: Path) -> dict[str, str]:
    """Study id -> MosMed category from ``prepare/datalist.json`` ({} when unreadable)."""
    from volseg.data.mosmed import Datalist
    from volseg.errors import VolsegError

    try:
        datalist = Datalist.load(prepare_dir / "datalist.json")
    except (OSError, VolsegError):  # Datalist.load names a malformed file as InputError
        return {}
    return {sid: study.category for sid, study in datalist.studies.items()}


def _per_seed_cases(
    rows: Sequence[Mapping[str, Any]], arm: str, key: tuple[str, str, str], folder: str
) -> dict[str, dict[str, float]]:
    """Seed -> per-case Dice of one arm's finished cells (``folder``: evaluate output)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if (r["backbone"], r["recalibration"], r["n_labeled"]) != key or r["arm"] != arm:
            continue
        if r.get("status") != "done":
            continue
        if folder == PAINTED_FOLDER and r.get("painted_n") in (None, ""):
            continue  # no painted result for the cell's current model (study.csv row)
        cases = case_dice(Path(r["run_dir"]) / folder / "per_case.csv")
        if cases:
            out[str(r.get("seed", ""))] = cases
    return out


def _differences(
    arm_cases: Mapping[str, Mapping[str, float]], ref_cases: Mapping[str, Mapping[str, float]]
) -> tuple[list[str], dict[str, list[float]]]:
    """Seeds with both cells, and per case its (arm, reference) Dice in each such seed.

    Only cases scored in every one of those seeds are kept, so each seed weighs the same.
    """
    seeds = [s for s in arm_cases if s in ref_cases]
    if not seeds:
        return [], {}
    common = set.intersection(*(set(arm_cases[s]) & set(ref_cases[s]) for s in seeds))
    return seeds, {c: [arm_cases[s][c] - ref_cases[s][c] for s in seeds] for c in sorted(common)}


def _summary_row(
    cases: Sequence[str],
    diffs: Mapping[str, Sequence[float]],
    arm_cases: Mapping[str, Mapping[str, float]],
    ref_cases: Mapping[str, Mapping[str, float]],
    seeds: Sequence[str],
    n_resamples: int,
) -> dict[str, Any]:
    """The figures of one stratum: means, seed-averaged difference and its bootstrap CI."""
    per_case = np.array([np.mean(diffs[c]) for c in cases])
    ci = bootstrap_ci(per_case, n_resamples=n_resamples, seed=0)
    per_seed = [np.mean([diffs[c][i] for c in cases]) for i in range(len(seeds))]
    return {
        "n_scans": len(cases),
        "n_seeds": len(seeds),
        "reference_dice": float(np.mean([ref_cases[s][c] for s in seeds for c in cases])),
        "arm_dice": float(np.mean([arm_cases[s][c] for s in seeds for c in cases])),
        "diff_mean": float(per_case.mean()),
        "diff_ci95_low": None if ci is None else ci[0],
        "diff_ci95_high": None if ci is None else ci[1],
        "ci_excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
        "diff_per_seed": "/".join(f"{d:+.3f}" for d in per_seed),
    }


def paired_rows(
    rows: Sequence[Mapping[str, Any]],
    categories: Mapping[str, str],
    n_resamples: int = 2000,
    reference: str = REFERENCE_ARM,
) -> list[dict[str, Any]]:
    """One row per network × label count × arm × stratum with a paired difference.

    ``rows`` are the study's CSV rows (with ``run_dir`` and ``seed``); ``categories``
    maps test study ids to their MosMed category (for the strata). Strata without scans
    are left out; nothing is returned without finished reference cells.
    """
    out: list[dict[str, Any]] = []
    keys = dict.fromkeys((r["backbone"], r["recalibration"], r["n_labeled"]) for r in rows)
    arms = [a for a in dict.fromkeys(r["arm"] for r in rows) if a != reference]
    for key in keys:
        for arm in arms:
            for folder, strata in (("evaluate", TEST_STRATA), (PAINTED_FOLDER, None)):
                arm_cases = _per_seed_cases(rows, arm, key, folder)
                ref_cases = _per_seed_cases(rows, reference, key, folder)
                seeds, diffs = _differences(arm_cases, ref_cases)
                if not diffs:
                    continue
                groups = _strata(list(diffs), categories, strata)
                for stratum, cases in groups.items():
                    figures = _summary_row(cases, diffs, arm_cases, ref_cases, seeds, n_resamples)
                    out.append(
                        {
                            "backbone": key[0],
                            "recalibration": key[1],
                            "n_labeled": key[2],
                            "arm": arm,
                            "reference": reference,
                            "stratum": stratum,
                            **figures,
                        }
                    )
    return out


def _strata(
    cases: Sequence[str], categories: Mapping[str, str], strata: Sequence[str] | None
) -> dict[str, list[str]]:
    """Cases per stratum (``strata`` None: the painted set, one stratum of every case)."""
    if strata is None:
        return {PAINTED_STRATUM: list(cases)}
    groups: dict[str, list[str]] = {"all": list(cases)}
    for case in cases:
        category = categories.get(case)
        if category is not None:
            groups.setdefault(stratum_of(category), []).append(case)
    return {s: groups[s] for s in strata if groups.get(s)}


def _num(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def render_paired_markdown(prows: Sequence[Mapping[str, Any]]) -> str:
    """The paired section of ``study.md`` (empty without paired rows)."""
    if not prows:
        return ""
    lines = [
        f"## Paired per-scan differences to {prows[0]['reference']}",
        "",
        "Dice of the arm minus Dice of the reference arm on the same scan, within each seed, "
        "averaged over seeds; 95 % CI: bootstrap over scans. Strata by the test scan's "
        "category; `painted`: the painted-real-anatomy set.",
        "",
        "| network | labels | arm | stratum | scans | seeds | reference Dice | arm Dice | "
        "difference | 95 % CI | per seed |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in prows:
        ci = (
            f"{_num(r['diff_ci95_low'], True)} to {_num(r['diff_ci95_high'], True)}"
            if r.get("diff_ci95_low") is not None
            else "–"
        )
        lines.append(
            f"| {r['backbone']}-{r['recalibration']} | {r['n_labeled']} | {r['arm']} | "
            f"{r['stratum']} | {r['n_scans']} | {r['n_seeds']} | {_num(r['reference_dice'])} | "
            f"{_num(r['arm_dice'])} | {_num(r['diff_mean'], True)} | {ci} | "
            f"{r['diff_per_seed']} |"
        )
    return "\n".join(lines) + "\n"


def plot_paired(prows: Sequence[Mapping[str, Any]], dest: Path) -> Path | None:
    """``study_paired.png``: the differences with their CIs, a panel per stratum."""
    if not prows:
        return None
    from matplotlib.figure import Figure

    strata = list(dict.fromkeys(r["stratum"] for r in prows))
    fig = Figure(figsize=(4.0 * len(strata), 0.45 * _max_rows(prows, strata) + 1.6))
    axes = fig.subplots(1, len(strata), sharex=True, squeeze=False)[0]  # one Dice scale
    for ax, stratum in zip(axes, strata, strict=True):
        sub = [r for r in prows if r["stratum"] == stratum]
        ys = list(range(len(sub)))[::-1]
        for y, r in zip(ys, sub, strict=True):
            low, high = r.get("diff_ci95_low"), r.get("diff_ci95_high")
            err = None if low is None else [[r["diff_mean"] - low], [high - r["diff_mean"]]]
            ax.errorbar(r["diff_mean"], y, xerr=err, fmt="o", capsize=3, color="C0")
        ax.axvline(0.0, color="0.4", linewidth=1)
        many = len({(r["backbone"], r["recalibration"]) for r in prows}) > 1
        ax.set_yticks(ys, [_tick(r, many) for r in sub])
        ax.set_xlabel(f"Dice − {sub[0]['reference']} Dice")
        ax.set_title(f"{stratum} ({sub[0]['n_scans']} scans)")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(dest)


def _tick(row: Mapping[str, Any], with_network: bool) -> str:
    text = f"{row['arm']} n={row['n_labeled']}"
    return f"{row['backbone']}-{row['recalibration']} {text}" if with_network else text


def _max_rows(prows: Sequence[Mapping[str, Any]], strata: Sequence[str]) -> int:
    return max(sum(1 for r in prows if r["stratum"] == s) for s in strata)
