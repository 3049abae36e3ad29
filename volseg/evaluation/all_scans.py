"""Figures over every test scan, masked or not: predicted CT grade against the MosMed
category, and the false-positive burden on healthy (CT-0) scans.

MosMed has lesion masks for 50 CT-1 studies only, so mask-based metrics rest on a small,
mild subset; every study's category (CT-0 … CT-4, the folder it sits in) is known, and
predict's ``<id>.json`` holds its predicted grade and lesion burden. These figures use both.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from volseg.errors import InputError
from volseg.evaluation.stats import describe, grade_confusion

SCAN_COLUMNS: tuple[str, ...] = (
    "case_id",
    "category",
    "pred_grade",
    "lesion_volume_ml",
    "involvement_pct",
    "gated",
    "gated_involvement_pct",
    "report_file",
)
_CATEGORY = re.compile(r"^CT-([0-4])$")


def category_grade(category: str) -> int:
    """``"CT-2"`` → 2; anything else is an error naming the value."""
    match = _CATEGORY.match(str(category).strip())
    if match is None:
        raise InputError(f"category {category!r} is not one of CT-0 … CT-4")
    return int(match.group(1))


def read_categories(source: str | Path) -> dict[str, str]:
    """Study id → MosMed category, from a dataset root (``studies/CT-k/<id>.nii.gz``) or a
    CSV with columns ``id`` (or ``case_id``) and ``category``."""
    from volseg.data.layout import STUDIES_DIR, study_id

    source = Path(source)
    if source.is_dir():
        folders = sorted(p for p in (source / STUDIES_DIR).glob("CT-*") if p.is_dir())
        if not folders:
            raise InputError(f"{source}: no {STUDIES_DIR}/CT-k folders to read categories from")
        return {
            study_id(image): folder.name
            for folder in folders
            for image in sorted(folder.iterdir())
            if image.name.endswith((".nii", ".nii.gz"))
        }
    if not source.is_file():
        raise InputError(f"{source}: categories file or dataset folder not found")
    with source.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or ())
        key = "id" if "id" in fields else "case_id"
        if key not in fields or "category" not in fields:
            raise InputError(f"{source}: needs columns 'id' (or 'case_id') and 'category'")
        out = {row[key]: row["category"] for row in reader}
    for sid, category in out.items():
        try:
            category_grade(category)
        except InputError as err:
            raise InputError(f"{source}: study {sid}: {err}") from None
    return out


def scan_rows(categories: Mapping[str, str], report_dir: str | Path) -> list[dict[str, Any]]:
    """One row per study in ``categories`` from predict's ``<id>.json`` in ``report_dir``.

    A study without a report keeps its row with empty predictions (counted as missing).
    """
    report_dir = Path(report_dir)
    rows = []
    for sid in sorted(categories):
        path = report_dir / f"{sid}.json"
        row: dict[str, Any] = {"case_id": sid, "category": categories[sid]}
        if path.is_file():
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InputError(f"{path}: not a readable predict report ({err})") from None
            row |= {
                "pred_grade": report.get("ct_grade"),
                "lesion_volume_ml": report.get("lesion_volume_ml"),
                "involvement_pct": report.get("involvement_pct"),
                "gated": report.get("gated"),
                "gated_involvement_pct": report.get("gated_involvement_pct"),
                "report_file": str(path),
            }
        rows.append(row)
    return rows


def summarize_scans(
    rows: Sequence[Mapping[str, Any]], n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Grade agreement with the category over all scans, and the burden called on CT-0 ones.

    ``grade``: the 5×5 confusion (rows MosMed category, columns predicted grade), accuracy
    and within-one-grade rate over the scans with a predicted grade. ``healthy``: over the
    CT-0 scans with a report, the predicted lesion mL and % of lung and how many were
    called CT-0.
    """
    graded = [
        {"ref_grade": category_grade(r["category"]), "pred_grade": r["pred_grade"]}
        for r in rows
        if r.get("pred_grade") is not None
    ]
    healthy = [r for r in rows if r["category"] == "CT-0" and r.get("report_file")]
    return {
        "n_scans": len(rows),
        "n_with_report": sum(1 for r in rows if r.get("report_file")),
        "n_with_grade": len(graded),
        "missing_report": [r["case_id"] for r in rows if not r.get("report_file")],
        "grade": grade_confusion(graded),
        "healthy": {
            "n": len(healthy),
            "called_ct0": sum(1 for r in healthy if r.get("pred_grade") == 0),
            "lesion_volume_ml": describe(
                [r.get("lesion_volume_ml") for r in healthy], n_resamples, seed
            ),
            "involvement_pct": describe(
                [r.get("involvement_pct") for r in healthy], n_resamples, seed
            ),
        },
    }
