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

import numpy as np

from volseg.data.layout import study_id
from volseg.errors import InputError
from volseg.io import (
    cleanup_on_error,
    is_nifti,
    load_nifti,
    naming_errors,
    write_json_atomic,
    write_text_atomic,
)
from volseg.progress import progress

log = logging.getLogger(__name__)

DEFAULT_BINS: tuple[float, ...] = (0.0, 5.0, 25.0, 50.0, 100.0)
AFFINE_ATOL_MM = 1e-3
"""Affines closer than this (mm, element-wise) are the same grid."""

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
CASE_COLUMNS: tuple[str, ...] = ("case_id", "pred_file", "ref_file", "lungs_file", "resampled")
SKIP_SUFFIXES = ("_prob", "_lungs", "_types", "_uncertainty")
PLOT_FILES = {
    "dice": "dice_vs_burden.png",
    "bland_altman": "bland_altman_volume.png",
    "confusion": "grade_confusion.png",
}
OUTPUT_FILES = ("per_case.csv", "summary.json", *PLOT_FILES.values(), "report.md")


# ----------------------------------------------------------------------------- inputs


def list_masks(folder: str | Path, role: str) -> dict[str, Path]:
    """Map study id -> mask file for every NIfTI in ``folder`` (not ``SKIP_SUFFIXES``).

    Raises :class:`InputError` for a missing folder or two files with the same id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_nifti(path)):
            continue
        stem = path.name.split(".nii")[0]
        if stem.endswith(SKIP_SUFFIXES):
            continue
        sid = study_id(path)
        if sid in found:
            raise InputError(f"{role} files {found[sid]} and {path} have the same id '{sid}'")
        found[sid] = path
    return found


def pair_cases(
    preds: Mapping[str, Path], refs: Mapping[str, Path]
) -> tuple[list[str], list[Path], list[Path]]:
    """``(paired ids, predictions without a reference, references without a prediction)``."""
    paired = sorted(set(preds) & set(refs))
    pred_only = [preds[k] for k in sorted(set(preds) - set(refs))]
    ref_only = [refs[k] for k in sorted(set(refs) - set(preds))]
    return paired, pred_only, ref_only


def _read_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mask data (any dtype) and affine; refuses probability maps (floats strictly in (0, 1))."""
    img = load_nifti(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"{path}: could not decode image data ({exc})") from exc
    if data.ndim == 4:
        data = data[..., 0]
    if np.issubdtype(data.dtype, np.floating) and np.any((data > 0) & (data < 1)):
        raise InputError(
            f"{path}: has values between 0 and 1; expected a binary mask, not probabilities"
        )
    return data, np.asarray(img.affine, dtype=np.float64)


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """True when two volumes share shape and affine (within :data:`AFFINE_ATOL_MM`)."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(affine_a, affine_b, rtol=0.0, atol=AFFINE_ATOL_MM)
    )


def resample_nearest(
    data: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    labels: bool = False,
) -> np.ndarray:
    """Nearest-neighbour resampling of a mask (boolean) or, with ``labels``, of a label map
    (uint8 values kept) onto another grid, from the two affines."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    values = np.asarray(data).astype(np.uint8) if labels else np.asarray(data) > 0
    img = nib.Nifti1Image(values.astype(np.uint8), affine)
    out = resample_from_to(img, (tuple(shape), target_affine), order=0, mode="constant", cval=0)
    return np.asarray(out.dataobj) if labels else np.asarray(out.dataobj) > 0


def _on_reference_grid(
    path: Path,
    ref_path: Path,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    resample: bool,
    labels: bool = False,
) -> tuple[np.ndarray, bool]:
    """Read a mask (or, with ``labels``, a label map) and return it on the reference grid:
    ``(mask, was_resampled)``."""
    data, affine = _read_mask(path)
    if same_grid(data.shape, affine, ref_shape, ref_affine):
        return (np.asarray(data).astype(np.uint8) if labels else data > 0), False
    if not resample:
        raise InputError(
            f"{path} (shape {data.shape}) and {ref_path} (shape {ref_shape}) are on different "
            "grids (shape or affine differ); use --resample to resample onto the reference"
        )
    return resample_nearest(data, affine, ref_shape, ref_affine, labels), True


def evaluate_case(
    sid: str,
    pred_path: Path,
    ref_path: Path,
    lungs_path: Path | None,
    resample: bool,
    nsd_tolerance_mm: float,
    types_paths: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """Load one case's files and return its CSV row (identifiers plus :func:`case_metrics`,
    and :func:`type_metrics` when ``types_paths`` gives predicted and reference type maps)."""
    from volseg.evaluation.metrics import case_metrics, type_metrics
    from volseg.quantify import spacing_from_affine

    ref_data, ref_affine = _read_mask(ref_path)
    ref = ref_data > 0
    pred, resampled = _on_reference_grid(pred_path, ref_path, ref.shape, ref_affine, resample)
    lungs = None
    if lungs_path is not None:
        lungs, _ = _on_reference_grid(lungs_path, ref_path, ref.shape, ref_affine, resample)
    metrics = case_metrics(pred, ref, spacing_from_affine(ref_affine), lungs, nsd_tolerance_mm)
    row: dict[str, Any] = {
        "case_id": sid,
        "pred_file": pred_path.name,
        "ref_file": ref_path.name,
        "lungs_file": lungs_path.name if lungs_path is not None else None,
        "resampled": int(resampled),
    }
    row.update(metrics)
    if types_paths is not None:
        pred_types, _ = _on_reference_grid(
            types_paths[0], ref_path, ref.shape, ref_affine, resample, labels=True
        )
        ref_types, _ = _on_reference_grid(
            types_paths[1], ref_path, ref.shape, ref_affine, False, labels=True
        )
        row.update(type_metrics(pred_types, ref_types, spacing_from_affine(ref_affine)))
    return row


# ----------------------------------------------------------------------------- outputs


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


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
) -> dict[str, Any]:
    """The content of ``summary.json`` (NaN still present; made JSON-safe on writing)."""
    from volseg import __version__
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
        "unmatched": {
            "pred_without_ref": [str(p) for p in pred_only],
            "ref_without_pred": [str(p) for p in ref_only],
        },
        "missing_lungs": list(missing_lungs),
        "conventions": conventions,
    }


def _write_outputs(
    folder: Path, rows: Sequence[Mapping[str, Any]], summary: dict[str, Any]
) -> dict[str, str]:
    """Write CSV, plots, JSON and report into ``folder``; returns the plots written."""
    from volseg.evaluation import plots as P
    from volseg.evaluation.report import per_case_csv, render_report

    metric_cols = [k for k in rows[0] if k not in CASE_COLUMNS]
    write_text_atomic(folder / "per_case.csv", per_case_csv(rows, [*CASE_COLUMNS, *metric_cols]))
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
    summary["plots"] = dict(written)
    write_json_atomic(folder / "summary.json", _json_safe(summary))
    write_text_atomic(folder / "report.md", render_report(summary, written))
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
) -> Path:
    """Evaluate every prediction in ``pred_dir`` against ``ref_dir``; returns ``out_dir``.

    With ``types_dir`` (reference ``<id>_types.nii.gz``: 1 ground glass, 2 consolidation),
    cases whose prediction folder holds ``<id>_types.nii.gz`` too are also scored per type.

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
        rows.append(
            evaluate_case(sid, preds[sid], refs[sid], lung_file, resample, nsd_tolerance_mm, types)
        )
    if missing_lungs:
        log.warning("%d case(s) have no lung mask in %s", len(missing_lungs), lungs_dir)

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
                _write_outputs(staging, rows, summary)
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
