"""``volseg predict``: masks, probabilities, quantification and overlays for a batch of scans.

Before any computation every input is checked from its headers (readable 3D NIfTI with a
usable grid, DICOM series complete and evenly spaced, no two inputs with the same id), so a
bad header stops the run with one error before anything is written. Scans are decoded in a
background thread while the previous one is on the device; a scan whose content is not a CT
in Hounsfield units (NaN voxels, blank, raw 0..4095 values) fails when it is decoded.

Outputs per scan, written atomically: ``<id>_mask.nii.gz`` (uint8, the input's exact
shape/affine/header), optional ``<id>_prob.nii.gz`` and ``<id>_types.nii.gz`` (1 ground
glass, 2 consolidation) and, with ``uncertainty``, ``<id>_uncertainty.nii.gz`` (the spread
of the eight flipped predictions per voxel), ``<id>.json`` (volumes, involvement, CT grade, ground-glass and
consolidation burden, per lung too) and optional overlays; plus one ``summary.csv`` (``summary_part{i}.csv`` when
sharded). When a scan fails, the others are still predicted: each finished scan's outputs
are complete, ``summary.csv`` lists every scan with the failures' ``error``, and the run
ends with an error naming the failed file (exit code 2). When no scan finishes, nothing is
written.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from volseg.bundle import load_bundle
from volseg.data.layout import lungs_path, prediction_path
from volseg.data.lungs import LungMask
from volseg.errors import InputError
from volseg.inference.predictor import PredictOptions, Predictor, default_device, lung_mask_for
from volseg.inference.scans import Scan, ScanSource, check_source, discover_scans, load_scan
from volseg.io import (
    atomic_group,
    cleanup_on_error,
    read_nifti,
    write_json_atomic,
    write_nifti,
    write_text_atomic,
)
from volseg.progress import progress
from volseg.quantify import (
    CONSOLIDATION,
    GGO,
    lesion_types,
    quantify,
    spacing_from_affine,
    type_burden,
    voxel_volume_ml,
)

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
    "ggo_ml",
    "consolidation_ml",
    "ggo_pct",
    "consolidation_pct",
    "uncertainty_score",
    "needs_review",
    "lung_warnings",
    "seconds",
    "error",
)


def shard(items: Sequence[Any], num_parts: int, part_id: int) -> list[Any]:
    """Deterministic round-robin share ``part_id`` of ``num_parts`` (every item once)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError(f"--part-id must be in [0, {num_parts}) and --num-parts >= 1")
    return list(items[part_id::num_parts])


def _distributed_part() -> tuple[int, int] | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (world, int(os.environ.get("RANK", "0"))) if world > 1 else None


def _check_inputs(sources: Sequence[ScanSource]) -> None:
    """Fail fast on bad headers or two inputs with one id, before any output exists."""
    seen: dict[str, ScanSource] = {}
    for src in sources:
        other = seen.setdefault(src.id, src)
        if other is not src:
            raise InputError(
                f"{other.path} and {src.path} have the same id '{src.id}'; their outputs "
                "would overwrite each other (rename one or predict them separately)"
            )
    for src in sources:
        check_source(src)


OUTPUT_TYPES = ("nifti", "dicom-seg", "both")


def _check_output_type(output_type: str, sources: Sequence[ScanSource]) -> None:
    """A DICOM SEG references its source series: only DICOM inputs can have one."""
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"--output-type {output_type}: choose one of {', '.join(OUTPUT_TYPES)}")
    if output_type != "nifti":
        for src in sources:
            if src.series_uid is None:
                raise InputError(
                    f"{src.path}: --output-type {output_type} needs a DICOM series as input "
                    "(a DICOM SEG references the series it segments)"
                )


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder (-o names the output folder)")


def _prefetch(sources: Sequence[ScanSource]) -> Iterator[tuple[ScanSource, Scan | InputError]]:
    """Decode scan i+1 in a background thread while scan i is processed.

    Yields ``(source, scan)``, or ``(source, error)`` for a scan that cannot be used.
    """
    if not sources:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load_scan, sources[0])
        for src, nxt in zip(sources, list(sources[1:]) + [None], strict=True):
            try:
                scan: Scan | InputError = pending.result()
            except InputError as exc:
                scan = exc
            if nxt is not None:
                pending = pool.submit(load_scan, nxt)
            yield src, scan


def _lungs_for(scan: Scan, lungs: Path | None, use_lungs: bool) -> LungMask | None:
    """The scan's lung mask with its QC: given (``--lungs``) or computed; warnings logged."""
    if not use_lungs:
        return None
    result = None
    if lungs is not None:
        file = lungs if lungs.is_file() else lungs_path(lungs, scan.id)
        if file.exists():
            mask, affine = read_nifti(file)
            if mask.shape != scan.array.shape or not np.allclose(affine, scan.affine, atol=1e-3):
                raise InputError(f"{file}: lung mask geometry differs from {scan.source.path}")
            result = LungMask.of_mask(mask > 0, scan.array, scan.affine)
        else:
            log.warning("%s: no lung mask at %s, computing one", scan.id, file)
    if result is None:
        result = lung_mask_for(scan.array, scan.affine)
    for warning in result.warnings:
        log.warning("%s: %s", scan.id, warning)
    return result


def _with_lesion(lung: LungMask | None, used: np.ndarray | None, scan: Scan) -> LungMask | None:
    """The lung QC of the lungs involvement was measured in: the lung mask plus predicted
    lesion just outside it (consolidation the mask left out), when there is any."""
    if lung is None or used is None or np.count_nonzero(used) == np.count_nonzero(lung.mask):
        return lung
    return LungMask.of_mask(used, scan.array, scan.affine)


def run_predict(
    model: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    lungs: str | Path | None = None,
    use_lungs: bool = True,
    write_prob: bool = False,
    write_types: bool = False,
    output_type: str = "nifti",
    overlays: bool = False,
    reference: str | Path | None = None,
    series: str | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    device: str | None = None,
    **overrides: Any,
) -> Path:
    """Predict every scan in ``inputs`` with the bundle at ``model``; returns the summary CSV.

    ``overrides`` are :class:`PredictOptions` fields (roi_size, overlap, sw_batch_size, tta,
    threshold, min_component_mm3); unset ones come from the bundle. A scan that fails does
    not stop the others; the run then ends with an :class:`InputError` naming it, after the
    summary (finished scans plus the failures) is written. See the module docstring.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise InputError("no input scans given")
    sources = [s for item in items for s in discover_scans(item, series)]
    dist = _distributed_part()
    if dist is not None and num_parts == 1:
        num_parts, part_id = dist
    sharded = num_parts > 1
    sources = shard(sources, num_parts, part_id)
    _check_inputs(sources)
    _check_output_type(output_type, sources)
    if reference is not None and not Path(reference).exists():
        raise InputError(f"{reference}: reference mask file or folder not found (--ref)")
    lungs_arg = Path(lungs) if lungs is not None else None
    if use_lungs and lungs_arg is not None and not lungs_arg.exists():
        raise InputError(f"{lungs_arg}: lung mask file or folder not found (--lungs)")
    dev = _device(device, dist is not None)
    bundle = load_bundle(model, dev)
    options = PredictOptions.from_bundle(bundle, **overrides)
    predictor = Predictor(bundle, options, dev)
    log.info("predicting %d scan(s) on %s with %s", len(sources), dev, bundle.path)
    rows: list[dict[str, Any]] = []
    failed: list[tuple[ScanSource, InputError]] = []
    with cleanup_on_error(out_dir):
        scans = progress(_prefetch(sources), total=len(sources), desc="predict", unit="scan")
        for src, scan in scans:
            start = time.perf_counter()
            try:
                if isinstance(scan, InputError):
                    raise scan
                lung = _lungs_for(scan, lungs_arg, use_lungs)
                result = predictor.predict(
                    scan.array, scan.affine, None if lung is None else lung.mask
                )
                lung = _with_lesion(lung, result.lungs, scan)
                row = _write_outputs(
                    scan,
                    result,
                    lung,
                    out_dir,
                    bundle.path,
                    options,
                    write_prob,
                    overlays,
                    write_types,
                    output_type,
                    None if reference is None else Path(reference),
                )
            except InputError as exc:
                if len(sources) > 1:
                    log.warning("%s; going on with the other scans", exc)
                failed.append((src, exc))
                rows.append({"id": src.id, "input": str(src.path), "error": str(exc)})
                continue
            rows.append(row | {"seconds": round(time.perf_counter() - start, 3)})
        if len(failed) == len(rows):
            raise _failure(failed, len(rows), None)
        name = f"summary_part{part_id}.csv" if sharded else "summary.csv"
        summary = write_text_atomic(out_dir / name, _summary_csv(rows))
    if failed:
        raise _failure(failed, len(rows), summary)
    return summary


def _device(device: str | None, distributed: bool) -> Any:
    """The torch device for ``--device`` (default: CUDA when present), checked."""
    import torch

    if not device:
        dev = default_device()
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise InputError(f"--device {device}: not a device (use cpu, cuda or cuda:N)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine")
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    if distributed and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _failure(
    failed: list[tuple[ScanSource, InputError]], total: int, summary: Path | None
) -> InputError:
    """One error for the failed scans: the first one's message and what became of the rest."""
    first = str(failed[0][1])
    if summary is None:
        if total == 1:
            return failed[0][1]
        return InputError(f"{first} (every one of the {total} scans failed; nothing written)")
    done = total - len(failed)
    return InputError(
        f"{first} ({len(failed)} of {total} scans failed; the other {done} finished, "
        f"all listed in {summary})"
    )


def _write_outputs(
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
) -> dict[str, Any]:
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
                "input": str(scan.source.path),
                "series_uid": scan.source.series_uid,
                **stats,
                "by_side": by_side,
                "model": str(model_path),
                "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
                "lungs_used": result.lungs is not None,
                "gated": result.gated,
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
    return {"id": sid, "input": str(scan.source.path), **stats}


def _reference_for(scan: Scan, reference: Path) -> np.ndarray | None:
    """The scan's reference mask for the overlays (``--ref``: a file, or a folder holding
    ``<id>_mask.nii.gz``), on the scan's grid; None when the folder has none for it."""
    file = reference if reference.is_file() else prediction_path(reference, scan.id)
    if not file.exists():
        log.warning("%s: no reference mask at %s; overlays without it", scan.id, file)
        return None
    mask, affine = read_nifti(file)
    if mask.shape != scan.array.shape or not np.allclose(affine, scan.affine, atol=1e-3):
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


def _summary_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in SUMMARY_FIELDS})
    return buf.getvalue()
