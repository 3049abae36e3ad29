"""Files for people: the per-case CSV and the one-page Markdown report.

Both are rendered to text here and written atomically by the caller's writers
(:func:`volseg.io.write_text_atomic`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

LABELS: dict[str, str] = {
    "dice": "Dice",
    "iou": "IoU",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "hd95_mm": "HD95 (mm)",
    "nsd": "NSD",
    "lesion_sensitivity": "Lesion sensitivity",
    "lesion_precision": "Lesion precision",
    "lesion_f1": "Lesion F1",
    "volume_diff_ml": "Volume difference (mL)",
    "abs_volume_error_ml": "Abs. volume error (mL)",
    "rel_volume_error_pct": "Rel. volume error (%)",
    "involvement_error_pct": "Involvement error (pp)",
    "abs_involvement_error_pct": "Abs. involvement error (pp)",
    "ggo_dice": "Ground-glass Dice (cases with ground glass)",
    "consolidation_dice": "Consolidation Dice (cases with consolidation)",
    "ggo_volume_diff_ml": "Ground-glass volume difference (mL)",
    "consolidation_volume_diff_ml": "Consolidation volume difference (mL)",
}


def _cell(value: Any) -> str:
    """CSV cell: empty for missing (None/NaN), shortest round-trip text for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


def per_case_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with one row per case; missing values are empty cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    value = float(value)
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_sd(stats: Mapping[str, Any]) -> str:
    """``mean ± sd``; ``mean`` alone for one case; ``–`` for none."""
    if not stats["n"]:
        return "–"
    if stats["n"] == 1:
        return _fmt(stats["mean"])
    return f"{_fmt(stats['mean'])} ± {_fmt(stats['sd'])}"


def _summary_table(stats: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| metric | n | missing | mean ± sd | median | 95 % CI of mean |",
        "|---|---:|---:|---|---:|---|",
    ]
    for key, s in stats.items():
        ci = s.get("ci95")
        ci_text = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "–"
        lines.append(
            f"| {LABELS.get(key, key)} | {s['n']} | {s['n_missing']} | "
            f"{_mean_sd(s)} | {_fmt(s['median'])} | {ci_text} |"
        )
    return lines


def _strata_table(strata: Sequence[Mapping[str, Any]]) -> list[str]:
    metrics = list(strata[0]["metrics"]) if strata else []
    head = "| involvement (%) | cases | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |"
    lines = [head, "|---|---:|" + "---|" * len(metrics)]
    for s in strata:
        cells = [_mean_sd(s["metrics"][m]) for m in metrics]
        lines.append(f"| {s['bin']} | {s['n_cases']} | " + " | ".join(cells) + " |")
    return lines


def _confusion_table(confusion: Mapping[str, Any]) -> list[str]:
    labels = confusion["labels"]
    lines = [
        "| reference \\ predicted | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for label, row in zip(labels, confusion["matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _all_scans_section(scans: Mapping[str, Any]) -> list[str]:
    """Grade against MosMed category over every scan, and the burden called on CT-0 scans."""
    grade, healthy = scans["grade"], scans["healthy"]
    out = [
        "## Every scan: predicted grade against the MosMed category",
        "",
        f"{scans['n_scans']} scans with a category, {scans['n_with_report']} with a predict "
        f"report, {scans['n_with_grade']} with a predicted grade (per scan: "
        "[per_scan.csv](per_scan.csv)).",
        "",
    ]
    if grade["n"]:
        out += [
            f"Accuracy {_fmt(grade['accuracy'])}, within one grade "
            f"{_fmt(grade['within_one_accuracy'])} (n = {grade['n']}).",
            "",
            *_confusion_table(grade),
            "",
        ]
    if healthy["n"]:
        out += [
            f"Healthy (CT-0) scans: {healthy['n']}; called CT-0: {healthy['called_ct0']} of "
            f"{healthy['n']}. Lesion volume called on them: "
            f"{_mean_sd(healthy['lesion_volume_ml'])} mL (max "
            f"{_fmt(healthy['lesion_volume_ml']['max'], 2)}); lung involvement "
            f"{_mean_sd(healthy['involvement_pct'])} % (n = "
            f"{healthy['involvement_pct']['n']} with lungs).",
            "",
        ]
    if scans["missing_report"]:
        out += [f"Scans without a predict report: {', '.join(scans['missing_report'])}.", ""]
    return out


def render_report(summary: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """One-page Markdown report from ``summary.json``'s content and the plot file names."""
    counts = summary["counts"]
    inputs = summary["inputs"]
    out = [
        "# volseg evaluation report",
        "",
        f"- predictions: `{inputs['pred_dir']}`",
        f"- references: `{inputs['ref_dir']}`",
        f"- lung masks: `{inputs['lungs_dir']}`"
        if inputs.get("lungs_dir")
        else "- lung masks: none",
        f"- evaluated pairs: **{counts['pairs']}** "
        f"(resampled onto the reference grid: {counts['resampled']})",
        f"- predictions without a reference: {counts['pred_without_ref']}; "
        f"references without a prediction: {counts['ref_without_pred']}",
        f"- NSD tolerance {inputs['nsd_tolerance_mm']:g} mm; bootstrap "
        f"{inputs['bootstrap']} resamples (percentile method, seed {inputs['seed']})",
        "",
        "Per-case values: [per_case.csv](per_case.csv); everything below: "
        "[summary.json](summary.json).",
        "",
        "## Summary over cases",
        "",
        *_summary_table(summary["metrics"]),
        "",
        "Means exclude undefined values (\u201cmissing\u201d); see the conventions below.",
        "",
    ]
    if summary.get("stratified"):
        out += ["## By infection burden (reference lung involvement)", ""]
        out += _strata_table(summary["stratified"]) + [""]
    confusion = summary.get("grade_confusion")
    if confusion and confusion["n"]:
        out += [
            "## CT grade",
            "",
            f"Accuracy {_fmt(confusion['accuracy'])}, within one grade "
            f"{_fmt(confusion['within_one_accuracy'])} (n = {confusion['n']}).",
            "",
            *_confusion_table(confusion),
            "",
        ]
    if summary.get("all_scans"):
        out += _all_scans_section(summary["all_scans"])
    if plots:
        out += ["## Plots", ""]
        for title, name in plots.items():
            out += [f"### {title}", "", f"![{title}]({name})", ""]
    unmatched = summary["unmatched"]
    if unmatched["pred_without_ref"] or unmatched["ref_without_pred"]:
        out += ["## Unmatched files (not evaluated)", ""]
        for label, key in (
            ("Predictions without a reference", "pred_without_ref"),
            ("References without a prediction", "ref_without_pred"),
        ):
            if unmatched[key]:
                out += [f"{label}:", ""] + [f"- `{name}`" for name in unmatched[key]] + [""]
    if summary.get("missing_lungs"):
        out += ["Cases without a lung mask (no involvement or grade):", ""]
        out += [f"- `{c}`" for c in summary["missing_lungs"]] + [""]
    out += ["## Conventions", ""]
    out += [f"- **{k}**: {v}" for k, v in summary["conventions"].items()]
    return "\n".join(out) + "\n"
