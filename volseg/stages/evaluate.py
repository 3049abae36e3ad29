"""The evaluate stage: pair predictions with references, compute metrics, write a report.

Predictions and references are ``<id>_mask.nii.gz`` files (ids from
:func:`volseg.data.layout.study_id`), lung masks ``<id>_lungs.nii.gz``. Unpaired files on
either side are listed in the summary and report, never silently dropped. A prediction
whose grid (shape or affine) differs from its reference is an error naming both files,
unless ``resample=True``: then it is resampled onto the reference grid with nearest
neighbour, from the affines. All metrics are computed before anything is written; the
outputs are assembled in a temporary folder and moved into place with the report last.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from volseg import rundir
from volseg.errors import InputError
from volseg.evaluation.cases import evaluate_case, list_masks, pair_cases
from volseg.io import (
    cleanup_on_error,
    naming_errors,
    write_json_atomic,
    write_text_atomic,
)
from volseg.progress import progress
from volseg.utils import json_safe

log = logging.getLogger(__name__)

DEFAULT_BINS: tuple[float, ...] = (0.0, 5.0, 25.0, 50.0, 100.0)

SUMMARY_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "sensitivity",
    "specificity",
    "precision",
    "hd95_mm",
    "nsd",
    "lesion_sensitivity",
    "lesion_precision",
    "lesion_f1",
    "volume_diff_ml",
    "abs_volume_error_ml",
    "rel_volume_error_pct",
    "involvement_error_pct",
    "abs_involvement_error_pct",
)
TYPE_METRICS: tuple[str, ...] = (
    "ggo_dice",
    "consolidation_dice",
    "ggo_volume_diff_ml",
    "consolidation_volume_diff_ml",
)
"""Summarised when the run was given lesion types (``types_dir``)."""
STRATUM_METRICS: tuple[str, ...] = ("dice", "hd95_mm", "nsd", "lesion_f1", "abs_volume_error_ml")
CASE_COLUMNS: tuple[str, ...] = (
    "case_id",
    "pred_file",
    "ref_file",
    "lungs_file",
    "resampled",
    "gated",
    "gated_involvement_pct",
)
PLOT_FILES = {
    "dice": "dice_vs_burden.png",
    "bland_altman": "bland_altman_volume.png",
    "confusion": "grade_confusion.png",
    "category": "grade_vs_category.png",
    "montage": "montage.png",
}
OUTPUT_FILES = (
    "per_case.csv",
    "per_scan.csv",
    "summary.json",
    *PLOT_FILES.values(),
    "report.html",
    "report.md",
)


# ----------------------------------------------------------------------------- outputs


def build_summary(
    rows: Sequence[Mapping[str, Any]],
    *,
    inputs: Mapping[str, Any],
    pred_only: Sequence[Path],
    ref_only: Sequence[Path],
    missing_lungs: Sequence[str],
    bootstrap: int,
    seed: int,
    involvement_bins: Sequence[float],
    scans: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The content of ``summary.json`` (NaN still present; made JSON-safe on writing).

    ``scans`` (rows of :func:`volseg.evaluation.all_scans.scan_rows`) adds ``all_scans``:
    grade against category over every scan and the burden called on CT-0 scans.
    """
    from volseg import __version__
    from volseg.evaluation.all_scans import summarize_scans
    from volseg.evaluation.metrics import CONVENTIONS
    from volseg.evaluation.stats import grade_confusion, stratify, summarize

    with_lungs = [r for r in rows if r.get("ref_grade") is not None]
    conventions = dict(CONVENTIONS)
    conventions["summary"] = (
        "mean, sd (ddof 1), median over cases with a defined value; 95 % CI of the mean by "
        f"percentile bootstrap over cases ({bootstrap} resamples, seed {seed}); null = undefined"
    )
    conventions["strata"] = (
        "cases binned by reference lung involvement %, bins [lo, hi) with the last closed; "
        "needs lung masks"
    )
    return {
        "volseg_version": __version__,
        "inputs": dict(inputs),
        "counts": {
            "pairs": len(rows),
            "resampled": int(sum(int(r["resampled"]) for r in rows)),
            "with_lungs": len(with_lungs),
            "pred_without_ref": len(pred_only),
            "ref_without_pred": len(ref_only),
        },
        "metrics": summarize(
            rows,
            SUMMARY_METRICS + tuple(m for m in TYPE_METRICS if any(m in r for r in rows)),
            bootstrap,
            seed,
        ),
        "stratified_by": "ref_involvement_pct",
        "stratified": (
            stratify(
                with_lungs, STRATUM_METRICS, involvement_bins, n_resamples=bootstrap, seed=seed
            )
            if with_lungs
            else None
        ),
        "grade_confusion": grade_confusion(rows) if with_lungs else None,
        "all_scans": summarize_scans(scans, bootstrap, seed) if scans else None,
        "unmatched": {
            "pred_without_ref": [str(p) for p in pred_only],
            "ref_without_pred": [str(p) for p in ref_only],
        },
        "missing_lungs": list(missing_lungs),
        "conventions": conventions,
    }


def _write_outputs(
    folder: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: dict[str, Any],
    scans: Sequence[Mapping[str, Any]] | None = None,
    montage: tuple[Mapping[str, Path], Mapping[str, tuple[Path, Path]]] | None = None,
) -> dict[str, str]:
    """Write CSV, plots, JSON and the reports into ``folder``; returns the plots written.

    ``montage``: (case id → CT, case id → (prediction, reference)) for the case montage.
    """
    from volseg.evaluation import plots as P
    from volseg.evaluation.all_scans import SCAN_COLUMNS
    from volseg.evaluation.html_report import render_html
    from volseg.evaluation.report import per_case_csv, render_report

    metric_cols = [k for k in rows[0] if k not in CASE_COLUMNS]
    write_text_atomic(folder / "per_case.csv", per_case_csv(rows, [*CASE_COLUMNS, *metric_cols]))
    if scans:
        write_text_atomic(folder / "per_scan.csv", per_case_csv(scans, SCAN_COLUMNS))
    written: dict[str, str] = {}
    has_lungs = summary["counts"]["with_lungs"] > 0
    P.plot_dice_vs_burden(
        rows, folder / PLOT_FILES["dice"], "ref_involvement_pct" if has_lungs else "ref_volume_ml"
    )
    written["Dice vs infection burden"] = PLOT_FILES["dice"]
    P.plot_bland_altman(rows, folder / PLOT_FILES["bland_altman"])
    written["Bland–Altman of lesion volume"] = PLOT_FILES["bland_altman"]
    if summary["grade_confusion"] is not None:
        P.plot_confusion(summary["grade_confusion"], folder / PLOT_FILES["confusion"])
        written["CT-grade confusion matrix"] = PLOT_FILES["confusion"]
    if summary["all_scans"] is not None and summary["all_scans"]["grade"]["n"]:
        P.plot_confusion(
            summary["all_scans"]["grade"], folder / PLOT_FILES["category"], "MosMed category"
        )
        written["Predicted CT grade vs MosMed category, all scans"] = PLOT_FILES["category"]
    if montage is not None:
        from volseg.evaluation.montage import write_montage

        drawn = write_montage(rows, montage[0], montage[1], folder / PLOT_FILES["montage"])
        summary["montage_cases"] = drawn
        if drawn:
            title = f"Cases, lowest Dice first ({len(drawn)} of {len(rows)})"
            written[title] = PLOT_FILES["montage"]
    summary["plots"] = dict(written)
    write_json_atomic(folder / "summary.json", json_safe(summary))
    report = render_report(summary, written)
    write_text_atomic(folder / "report.html", render_html(report, folder))
    write_text_atomic(folder / "report.md", report)
    return written


def _publish(staging: Path, out_dir: Path) -> None:
    """Move finished outputs from ``staging`` into ``out_dir``, the report last.

    Earlier outputs of ours that this run did not produce (e.g. a confusion plot from a run
    with lung masks) are removed so the folder describes one run only.
    """
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    produced = {p.name for p in staging.iterdir()}
    for name in OUTPUT_FILES:
        if name not in produced and (out_dir / name).is_file():
            (out_dir / name).unlink()
    for name in sorted(produced - {"report.md"}) + ["report.md"]:
        os.replace(staging / name, out_dir / name)
    staging.rmdir()


# ----------------------------------------------------------------------------- stage


def _gate_record(report: Path) -> dict[str, Any]:
    """predict's ``gated`` flag for a case (the presence gate emptied its mask) and the
    involvement it emptied; None for both without a readable report."""
    import json

    try:
        record = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"gated": None, "gated_involvement_pct": None}
    return {
        "gated": bool(record.get("gated")),
        "gated_involvement_pct": record.get("gated_involvement_pct"),
    }


def _check_bins(bins: Sequence[float]) -> None:
    edges = [float(b) for b in bins]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise InputError(f"involvement bins must be two or more increasing edges, got {list(bins)}")


def _warn_unpaired(what: str, paths: Sequence[Path], shown: int = 5) -> None:
    """One warning line for all unpaired files (they are listed in ``summary.json``)."""
    if not paths:
        return
    names = ", ".join(p.name for p in paths[:shown]) + (", ..." if len(paths) > shown else "")
    log.warning("%d %s, not evaluated (all in summary.json): %s", len(paths), what, names)


def run_evaluate(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_dir: str | Path,
    lungs_dir: str | Path | None = None,
    resample: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
    nsd_tolerance_mm: float = 2.0,
    involvement_bins: Sequence[float] = DEFAULT_BINS,
    types_dir: str | Path | None = None,
    categories: Mapping[str, str] | None = None,
    images: Mapping[str, Path] | None = None,
) -> Path:
    """Evaluate every prediction in ``pred_dir`` against ``ref_dir``; returns ``out_dir``.

    With ``types_dir`` (reference ``<id>_types.nii.gz``: 1 ground glass, 2 consolidation),
    cases whose prediction folder holds ``<id>_types.nii.gz`` too are also scored per type.
    With ``categories`` (study id → MosMed category, for every scan to judge, masked or
    not), predict's ``<id>.json`` reports in ``pred_dir`` are scored too: grade against
    category and the burden called on CT-0 scans (``per_scan.csv``, ``all_scans``).
    With ``images`` (case id → CT on the reference grid), ``montage.png`` shows the cases.
    A case whose report says the presence gate emptied it is marked ``gated`` in the
    CSV and the plots.

    Writes ``per_case.csv``, ``summary.json``, PNG plots and ``report.md`` into ``out_dir``.
    Raises :class:`InputError` when no prediction has a reference, on unreadable files, or
    on a grid mismatch without ``resample``; nothing is written in that case.
    """
    from volseg.data.layout import lungs_path as lungs_name

    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    if bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {bootstrap}")
    if nsd_tolerance_mm <= 0:
        raise InputError(f"NSD tolerance must be positive, got {nsd_tolerance_mm}")
    _check_bins(involvement_bins)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: output exists and is not a folder")
    preds = list_masks(pred_dir, "prediction")
    refs = list_masks(ref_dir, "reference")
    if lungs_dir is not None and not Path(lungs_dir).is_dir():
        raise InputError(f"{lungs_dir}: lung-mask folder not found")
    if types_dir is not None and not Path(types_dir).is_dir():
        raise InputError(f"{types_dir}: lesion-type folder not found")
    paired, pred_only, ref_only = pair_cases(preds, refs)
    if not paired:
        raise InputError(
            f"no prediction in {pred_dir} ({len(preds)} masks) has a reference in {ref_dir} "
            f"({len(refs)} masks) with the same id"
        )
    _warn_unpaired("prediction(s) without a reference", pred_only)
    _warn_unpaired("reference(s) without a prediction", ref_only)

    rows: list[dict[str, Any]] = []
    missing_lungs: list[str] = []
    for sid in progress(paired, desc="evaluate", unit="case"):
        lung_file = None
        if lungs_dir is not None:
            lung_file = lungs_name(Path(lungs_dir), sid)
            if not lung_file.is_file():
                missing_lungs.append(sid)
                lung_file = None
        types = None
        if types_dir is not None:
            pair = (pred_dir / f"{sid}_types.nii.gz", Path(types_dir) / f"{sid}_types.nii.gz")
            types = pair if pair[0].is_file() and pair[1].is_file() else None
        row = evaluate_case(
            sid, preds[sid], refs[sid], lung_file, resample, nsd_tolerance_mm, types
        )
        row |= _gate_record(pred_dir / f"{sid}.json")
        rows.append(row)
    if missing_lungs:
        log.warning("%d case(s) have no lung mask in %s", len(missing_lungs), lungs_dir)
    scans = None
    if categories:
        from volseg.evaluation.all_scans import scan_rows

        scans = scan_rows(categories, pred_dir)

    inputs = {
        "pred_dir": str(pred_dir.resolve()),
        "ref_dir": str(ref_dir.resolve()),
        "lungs_dir": str(Path(lungs_dir).resolve()) if lungs_dir is not None else None,
        "resample": bool(resample),
        "bootstrap": int(bootstrap),
        "seed": int(seed),
        "nsd_tolerance_mm": float(nsd_tolerance_mm),
        "involvement_bins": [float(b) for b in involvement_bins],
        "types_dir": str(Path(types_dir).resolve()) if types_dir is not None else None,
        "categories": len(categories) if categories else None,
    }
    summary = build_summary(
        rows,
        inputs=inputs,
        pred_only=pred_only,
        ref_only=ref_only,
        missing_lungs=missing_lungs,
        bootstrap=bootstrap,
        seed=seed,
        involvement_bins=involvement_bins,
        scans=scans,
    )
    with cleanup_on_error(out_dir.parent):  # no empty folder left by a failed write
        with naming_errors(out_dir):
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        with naming_errors(out_dir, always=True):
            staging = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent)
            )
        staging.chmod(0o755)  # mkdtemp makes it private; it may become out_dir itself
        try:
            with naming_errors(out_dir, staging):
                _write_outputs(
                    staging,
                    rows,
                    summary,
                    scans,
                    None if images is None else (images, {s: (preds[s], refs[s]) for s in paired}),
                )
                _publish(staging, out_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    dice = summary["metrics"]["dice"]
    log.info(
        "evaluated %d case(s): Dice %.3f ± %.3f; report %s",
        len(rows),
        dice["mean"],
        dice["sd"] if math.isfinite(dice["sd"]) else 0.0,
        out_dir / "report.md",
    )
    return out_dir


# ----------------------------------------------------------------------------- in a run


def reference_root(cfg: Any) -> Path:
    """``data.root / data.reference``: the evaluation's reference masks."""
    return Path(cfg.data.root) / cfg.data.reference


def check_evaluate(cfg: Any) -> None:
    """The reference folder must exist before any stage runs, not after training."""
    ref_root = reference_root(cfg)
    if not ref_root.is_dir():
        raise InputError(f"{ref_root}: reference folder not found (data.reference)")


def _link(target: Path, link: Path) -> None:
    """Symlink ``link`` -> ``target`` (a copy where links are not supported)."""
    try:
        link.symlink_to(target.resolve())
    except OSError:
        shutil.copy2(target, link)


def _evaluation_inputs(cfg: Any, studies: Sequence[Any], folder: Path) -> tuple[Path, Path]:
    """Folders of links to the test studies' predictions and references.

    The reference folder holds masks for every split, and unlabeled test studies have no
    reference; linking just the test studies that have one keeps the report about the test
    split. A referenced study without a prediction stays visible as unmatched.
    """
    from volseg.data.layout import prediction_path

    check_evaluate(cfg)
    ref_root = reference_root(cfg)
    pred_root = rundir.stage_path(cfg.run_dir, "predict")
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
    for study in studies:  # every test study's report, masked or not (grade vs category)
        report = pred_root / f"{study.id}.json"
        if report.is_file():
            _link(report, pred_dir / report.name)
    n_ref = sum(1 for _ in ref_dir.iterdir())
    if n_ref == 0:
        raise InputError(
            f"{ref_root}: no reference mask for any of the {len(studies)} test studies"
        )
    log.info("evaluating %d of %d test studies (those with a reference)", n_ref, len(studies))
    return pred_dir, ref_dir


def run_evaluate_split(cfg: Any) -> Path:
    """The evaluate stage of a run: ``<run_dir>/predict`` against the references, for the
    test split, into ``<run_dir>/evaluate``."""
    studies = rundir.test_studies(cfg)
    out_dir = rundir.stage_path(cfg.run_dir, "evaluate")
    pred_dir, ref_dir = _evaluation_inputs(cfg, studies, out_dir / "inputs")
    e = cfg.evaluate
    return run_evaluate(
        pred_dir,
        ref_dir,
        out_dir,
        lungs_dir=rundir.lungs_folder(cfg, studies),
        resample=False,
        bootstrap=e.bootstrap,
        seed=cfg.seed,
        nsd_tolerance_mm=e.nsd_tolerance_mm,
        involvement_bins=e.involvement_bins,
        types_dir=_types_root(cfg),
        categories={study.id: study.category for study in studies},
        images={study.id: Path(study.image) for study in studies},
    )


def _types_root(cfg: Any) -> Path | None:
    """``data.root/lesion_types`` (synthetic truth per lesion type), when there is one."""
    from volseg.data.layout import TYPES_DIR

    folder = Path(cfg.data.root) / TYPES_DIR
    return folder if folder.is_dir() else None
