"""``volseg predict``: masks, probabilities, quantification and overlays for a batch of scans.

Every input's header is checked before any computation, so a bad file in a folder stops the
run with one error before anything is written. Scans are decoded in a background thread
while the previous one is on the device. Outputs per scan, written atomically:
``<id>_mask.nii.gz`` (uint8, the input's exact shape/affine/header), optional
``<id>_prob.nii.gz``, ``<id>.json`` (volumes, involvement, CT grade) and optional overlays;
plus one ``summary.csv`` (``summary_part{i}.csv`` when sharded).
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
from volseg.errors import InputError
from volseg.inference.predictor import PredictOptions, Predictor, default_device, lung_mask_for
from volseg.inference.scans import Scan, ScanSource, discover_scans, load_scan
from volseg.io import load_nifti, read_nifti, write_json_atomic, write_nifti, write_text_atomic
from volseg.progress import progress
from volseg.quantify import quantify, spacing_from_affine

log = logging.getLogger(__name__)

SUMMARY_FIELDS = (
    "id",
    "input",
    "lesion_volume_ml",
    "lung_volume_ml",
    "involvement_pct",
    "ct_grade",
    "seconds",
)


def shard(items: Sequence[Any], num_parts: int, part_id: int) -> list[Any]:
    """Deterministic round-robin share ``part_id`` of ``num_parts`` (every item once)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError(f"--part-id must be in [0, {num_parts}) and --num-parts >= 1")
    return list(items[part_id::num_parts])


def _distributed_part() -> tuple[int, int] | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (world, int(os.environ.get("RANK", "0"))) if world > 1 else None


def _check_headers(sources: Sequence[ScanSource]) -> None:
    """Fail fast on unreadable or non-3D NIfTI inputs, before any output exists."""
    for src in sources:
        if src.series_uid is None:
            load_nifti(src.path)


def _prefetch(sources: Sequence[ScanSource]) -> Iterator[Scan]:
    """Decode scan i+1 in a background thread while scan i is processed."""
    if not sources:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load_scan, sources[0])
        for nxt in list(sources[1:]) + [None]:
            scan = pending.result()
            if nxt is not None:
                pending = pool.submit(load_scan, nxt)
            yield scan


def _lungs_for(scan: Scan, lungs: Path | None, use_lungs: bool) -> np.ndarray | None:
    if not use_lungs:
        return None
    if lungs is not None:
        file = lungs if lungs.is_file() else lungs_path(lungs, scan.id)
        if file.exists():
            mask, affine = read_nifti(file)
            if mask.shape != scan.array.shape or not np.allclose(affine, scan.affine, atol=1e-3):
                raise InputError(f"{file}: lung mask geometry differs from {scan.source.path}")
            return (mask > 0).astype(np.uint8)
        log.warning("%s: no lung mask at %s, computing one", scan.id, file)
    return lung_mask_for(scan.array, scan.affine)


def run_predict(
    model: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    lungs: str | Path | None = None,
    use_lungs: bool = True,
    write_prob: bool = False,
    overlays: bool = False,
    series: str | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    device: str | None = None,
    **overrides: Any,
) -> Path:
    """Predict every scan in ``inputs`` with the bundle at ``model``; returns the summary CSV.

    ``overrides`` are :class:`PredictOptions` fields (roi_size, overlap, sw_batch_size, tta,
    threshold, min_component_mm3); unset ones come from the bundle.
    """
    import torch

    out_dir = Path(out_dir)
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise InputError("no input scans given")
    sources = [s for item in items for s in discover_scans(item, series)]
    dist = _distributed_part()
    if dist is not None and num_parts == 1:
        num_parts, part_id = dist
    sharded = num_parts > 1
    sources = shard(sources, num_parts, part_id)
    _check_headers(sources)
    dev = torch.device(device) if device else default_device()
    if dist is not None and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    bundle = load_bundle(model, dev)
    options = PredictOptions.from_bundle(bundle, **overrides)
    predictor = Predictor(bundle, options, dev)
    lungs_arg = Path(lungs) if lungs is not None else None
    log.info("predicting %d scan(s) on %s with %s", len(sources), dev, bundle.path)
    rows = []
    for scan in progress(_prefetch(sources), total=len(sources), desc="predict", unit="scan"):
        start = time.perf_counter()
        lung_mask = _lungs_for(scan, lungs_arg, use_lungs)
        result = predictor.predict(scan.array, scan.affine, lung_mask)
        rows.append(
            _write_outputs(scan, result, out_dir, bundle.path, options, write_prob, overlays)
            | {"seconds": round(time.perf_counter() - start, 3)}
        )
    name = f"summary_part{part_id}.csv" if sharded else "summary.csv"
    return write_text_atomic(out_dir / name, _summary_csv(rows))


def _write_outputs(
    scan: Scan,
    result: Any,
    out_dir: Path,
    model_path: Path | None,
    options: PredictOptions,
    write_prob: bool,
    overlays: bool,
) -> dict[str, Any]:
    sid = scan.id
    write_nifti(
        prediction_path(out_dir, sid), result.mask, scan.affine, dtype=np.uint8, like=scan.nifti
    )
    if write_prob:
        write_nifti(
            out_dir / f"{sid}_prob.nii.gz",
            result.probability,
            scan.affine,
            dtype=np.float32,
            like=scan.nifti,
        )
    stats = quantify(result.mask, result.lungs, spacing_from_affine(scan.affine))
    write_json_atomic(
        out_dir / f"{sid}.json",
        {
            "id": sid,
            "input": str(scan.source.path),
            "series_uid": scan.source.series_uid,
            **stats,
            "model": str(model_path),
            "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
            "lungs_used": result.lungs is not None,
            "gated": result.gated,
        },
    )
    if overlays:
        from volseg.inference.overlays import write_overlays

        write_overlays(
            out_dir / "overlays" / sid, scan.array, result.mask, scan.affine, result.lungs
        )
    return {"id": sid, "input": str(scan.source.path), **stats}


def _summary_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_FIELDS})
    return buf.getvalue()
