"""Quality control of pseudo-masks: one row per scan, and which scans fine-tuning may use.

A pseudo-mask fails when its MosMed grade (from % lung involvement) is more than one grade
away from the scan's CT category, when a CT-1+ scan got an empty mask, or when the
involvement is implausibly high (the generator rewrote the whole lung).
``<run_dir>/gan/qc.csv`` has the columns :data:`QC_COLUMNS`; ``passed`` is ``True``/``False``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from volseg.errors import InputError
from volseg.io import write_text_atomic

QC_COLUMNS = (
    "study_id",
    "split",
    "category",
    "pseudo_volume_ml",
    "involvement_pct",
    "pseudo_grade",
    "passed",
    "reason",
)
MAX_GRADE_GAP = 1
DEFAULT_MAX_INVOLVEMENT_PCT = 90.0


@dataclass
class QcRow:
    """One scan's QC record (``involvement_pct``/``pseudo_grade`` None without lungs)."""

    study_id: str
    split: str
    category: str
    pseudo_volume_ml: float
    involvement_pct: float | None
    pseudo_grade: int | None
    passed: bool
    reason: str


def category_grade(category: str) -> int:
    """``"CT-2"`` -> 2 (InputError for anything else)."""
    prefix = "CT-"
    if not category.startswith(prefix) or not category[len(prefix) :].isdigit():
        raise InputError(f"not a MosMed CT category: {category!r}")
    return int(category[len(prefix) :])


def check_pseudo(
    category: str,
    pseudo_volume_ml: float,
    involvement_pct: float | None,
    pseudo_grade: int | None,
    max_involvement_pct: float = DEFAULT_MAX_INVOLVEMENT_PCT,
) -> tuple[bool, str]:
    """``(passed, reason)`` by the QC rules; ``reason`` lists every failed rule, or ``ok``."""
    expected = category_grade(category)
    problems = []
    if involvement_pct is None or pseudo_grade is None:
        problems.append("no lung voxels to measure involvement")
    else:
        if involvement_pct > max_involvement_pct:
            problems.append(
                f"implausible involvement {involvement_pct:.1f}% > {max_involvement_pct:g}%"
            )
        if abs(pseudo_grade - expected) > MAX_GRADE_GAP:
            problems.append(f"pseudo grade CT-{pseudo_grade} vs category {category}")
    if expected >= 1 and pseudo_volume_ml <= 0:
        problems.append(f"empty pseudo-mask for a {category} scan")
    return (not problems, "; ".join(problems) or "ok")


def make_row(
    study_id: str,
    split: str,
    category: str,
    quantities: dict,
    max_involvement_pct: float = DEFAULT_MAX_INVOLVEMENT_PCT,
) -> QcRow:
    """A QC row from :func:`volseg.quantify.quantify` output of the pseudo-mask."""
    volume = float(quantities["lesion_volume_ml"])
    involvement = quantities.get("involvement_pct")
    grade = quantities.get("ct_grade")
    passed, reason = check_pseudo(category, volume, involvement, grade, max_involvement_pct)
    return QcRow(
        study_id=study_id,
        split=split,
        category=category,
        pseudo_volume_ml=volume,
        involvement_pct=None if involvement is None else float(involvement),
        pseudo_grade=None if grade is None else int(grade),
        passed=passed,
        reason=reason,
    )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_qc(path: str | Path, rows: Iterable[QcRow]) -> Path:
    """Write the QC table atomically (rows sorted by study id)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(QC_COLUMNS)
    for row in sorted(rows, key=lambda r: r.study_id):
        data = asdict(row)
        writer.writerow([_cell(data[c]) for c in QC_COLUMNS])
    return write_text_atomic(path, buf.getvalue())


def read_qc(path: str | Path) -> list[QcRow]:
    """Read a QC table written by :func:`write_qc` (InputError naming the file if malformed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: QC table not found (run 'volseg gan' first)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in QC_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = []
        for line, rec in enumerate(reader, start=2):
            try:
                rows.append(
                    QcRow(
                        study_id=rec["study_id"],
                        split=rec["split"],
                        category=rec["category"],
                        pseudo_volume_ml=float(rec["pseudo_volume_ml"]),
                        involvement_pct=float(rec["involvement_pct"])
                        if rec["involvement_pct"]
                        else None,
                        pseudo_grade=int(rec["pseudo_grade"]) if rec["pseudo_grade"] else None,
                        passed={"True": True, "False": False}[rec["passed"]],
                        reason=rec["reason"],
                    )
                )
            except (KeyError, ValueError) as exc:
                raise InputError(f"{path}:{line}: malformed QC row ({exc})") from None
    return rows


def passed_ids(path: str | Path) -> list[str]:
    """Study ids whose pseudo-mask passed QC: the ones fine-tuning may train on."""
    return [r.study_id for r in read_qc(path) if r.passed]
