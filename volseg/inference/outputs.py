"""What ``volseg predict`` writes for one scan, and its ``summary.csv``.

Per scan, together or not at all (:func:`volseg.io.atomic_group`): ``<id>_mask.nii.gz`` (the
input's exact grid), optional probability, uncertainty and type maps, an optional DICOM
Segmentation, ``<id>.json`` (volumes, involvement, ground glass / consolidation, per lung,
CT grade, lung QC) and optional overlays; :func:`summary_csv` makes one row per scan.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data.layout import prediction_path
from volseg.data.lungs import LungMask
from volseg.errors import InputError
from volseg.inference.predictor import PredictOptions
from volseg.inference.scans import Scan
from volseg.io import (
    atomic_group,
    read_nifti,
    write_json_atomic,
    write_nifti,
)
from volseg.quantify import (
    CONSOLIDATION,
    GGO,
    lesion_types,
    quantify,
    spacing_from_affine,
    type_burden,
    voxel_volume_ml,
)
from volseg.utils import same_grid

log = logging.getLogger(__name__)

SUMMARY_FIELDS = (
    "id",
    "input",
    "lesion_volume_ml",
    "lung_volume_ml",
    "right_lung_ml",
    "left_lung_ml",
    "involvement_pct",
    "ct_grade",
    "gated",
    "gated_involvement_pct",
    "ggo_ml",
    "consolidation_ml",
    "ggo_pct",
    "consolidation_pct",
    "uncertainty_score",
    "needs_review",
    "out_of_distribution",
    "ood_reasons",
    "lung_warnings",
    "seconds",
    "error",
)


def write_outputs(
    scan: Scan,
    result: Any,
    lung: LungMask | None,
    out_dir: Path,
    model_path: Path | None,
    options: PredictOptions,
    write_prob: bool,
    overlays: bool,
    write_types: bool = False,
    output_type: str = "nifti",
    reference: Path | None = None,
    ood: dict[str, Any] | None = None,
    review: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one scan's files (see the module docstring); returns its ``summary.csv`` row.

    ``ood``: the scan's ``out_of_distribution`` block (:func:`volseg.inference.ood.check_scan`);
    ``review``: where the review threshold came from, recorded beside ``needs_review``
    (:func:`volseg.inference.review.review_provenance`).
    """
    sid = scan.id
    spacing = spacing_from_affine(scan.affine)
    stats = quantify(result.mask, result.lungs, spacing)
    types = lesion_types(result.mask, scan.array, options.consolidation_min_hu)
    n_lungs = None if result.lungs is None else int(np.count_nonzero(result.lungs))
    stats |= type_burden(types, n_lungs, spacing)
    stats |= {} if lung is None else lung.qc()
    by_side = None if lung is None else _burden_by_side(lung, types, spacing)
    if result.disagreement is not None:
        stats["uncertainty_score"] = round(result.disagreement, 4)
        stats["needs_review"] = result.disagreement >= options.review_disagreement
        stats |= review or {"review_threshold": options.review_disagreement}
    gate = {"gated": result.gated, "gated_involvement_pct": _rounded(result.gated_involvement_pct)}
    with atomic_group() as stage:  # a scan's files appear together, or none of them
        if output_type in ("nifti", "both"):
            write_nifti(
                stage(prediction_path(out_dir, sid)),
                result.mask,
                scan.affine,
                dtype=np.uint8,
                like=scan.nifti,
            )
        if output_type in ("dicom-seg", "both"):
            _write_seg(stage(out_dir / f"{sid}_seg.dcm"), scan, result.mask, types, write_types)
        if write_prob:
            write_nifti(
                stage(out_dir / f"{sid}_prob.nii.gz"),
                result.probability,
                scan.affine,
                dtype=np.float32,
                like=scan.nifti,
            )
        if result.uncertainty is not None:
            write_nifti(
                stage(out_dir / f"{sid}_uncertainty.nii.gz"),
                result.uncertainty,
                scan.affine,
                dtype=np.float32,
                like=scan.nifti,
            )
        if write_types:
            write_nifti(
                stage(out_dir / f"{sid}_types.nii.gz"),
                types,
                scan.affine,
                dtype=np.uint8,
                like=scan.nifti,
            )
        write_json_atomic(
            stage(out_dir / f"{sid}.json"),
            {
                "id": sid,
                "input": str(scan.source.shown),
                "series_uid": scan.source.series_uid,
                **stats,
                "by_side": by_side,
                "model": str(model_path),
                "options": options.to_json(),
                "lungs_used": result.lungs is not None,
                **gate,
                "out_of_distribution": ood,
            },
        )
    if overlays:
        from volseg.inference.overlays import write_overlays

        write_overlays(
            out_dir / "overlays" / sid,
            scan.array,
            result.mask,
            scan.affine,
            result.lungs,
            reference=None if reference is None else _reference_for(scan, reference),
        )
    flags = {}
    if ood is not None:
        flags = {"out_of_distribution": ood["flagged"], "ood_reasons": ood["reasons"]}
    return {"id": sid, "input": str(scan.source.shown), **stats, **gate, **flags}


def _rounded(pct: float | None) -> float | None:
    return None if pct is None else round(pct, 3)


def _reference_for(scan: Scan, reference: Path) -> np.ndarray | None:
    """The scan's reference mask for the overlays (``--ref``: a file, or a folder holding
    ``<id>_mask.nii.gz``), on the scan's grid; None when the folder has none for it."""
    file = reference if reference.is_file() else prediction_path(reference, scan.id)
    if not file.exists():
        log.warning("%s: no reference mask at %s; overlays without it", scan.id, file)
        return None
    mask, affine = read_nifti(file)
    if not same_grid(mask.shape, affine, scan.array.shape, scan.affine):
        raise InputError(f"{file}: reference mask geometry differs from {scan.source.path}")
    return mask > 0


def _write_seg(path: Path, scan: Scan, mask: np.ndarray, types: np.ndarray, split: bool) -> None:
    """The scan's DICOM SEG: one lesion segment, or ground glass and consolidation."""
    from volseg import __version__
    from volseg.inference import dicom_seg
    from volseg.inference.scans import series_files

    segments = (dicom_seg.GROUND_GLASS, dicom_seg.CONSOLIDATION) if split else (dicom_seg.LESION,)
    labels = types if split else mask
    dicom_seg.write_dicom_seg(
        path, labels, scan.affine, series_files(scan.source), segments, __version__
    )


def _burden_by_side(lung: LungMask, types: np.ndarray, spacing: Any) -> dict[str, Any]:
    """Per lung: its volume (mL), ground-glass and consolidation volume (mL) and share (%)."""
    voxel_ml = voxel_volume_ml(spacing)
    lungs = {"right": lung.right_ml, "left": lung.left_ml}
    out: dict[str, Any] = {side: {"lung_ml": round(ml, 1)} for side, ml in lungs.items()}
    for name, code in (("ggo", GGO), ("consolidation", CONSOLIDATION)):
        right, left = lung.side_shares(types == code)
        for side, count in (("right", right), ("left", left)):
            ml = count * voxel_ml
            out[side][f"{name}_ml"] = round(ml, 2)
            out[side][f"{name}_pct"] = round(100.0 * ml / lungs[side], 3) if lungs[side] else None
    return out


def _csv_value(value: Any) -> Any:
    """Empty for None, lists joined by '; ' (lung warnings), the value otherwise."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return value


def summary_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in SUMMARY_FIELDS})
    return buf.getvalue()
