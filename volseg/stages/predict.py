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

import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from volseg import rundir
from volseg.bundle import load_bundle
from volseg.data.layout import lungs_path
from volseg.data.lungs import LungMask
from volseg.errors import InputError
from volseg.inference import ood
from volseg.inference.archives import unpacked_inputs
from volseg.inference.outputs import summary_csv, write_outputs
from volseg.inference.predictor import Predictor, lung_mask_for
from volseg.inference.review import review_provenance
from volseg.inference.scans import Scan, ScanSource, check_source, load_scan
from volseg.io import (
    cleanup_on_error,
    read_nifti,
    write_text_atomic,
)
from volseg.progress import progress
from volseg.utils import default_device, same_grid

log = logging.getLogger(__name__)

OOD_OFF = "switched off (predict.ood_check: false)"


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
                f"{other.shown} and {src.shown} have the same id '{src.id}'; their outputs "
                "would overwrite each other (rename one or predict them separately)"
            )
    for src in sources:
        try:
            check_source(src)
        except InputError as exc:
            raise src.explain(exc) from None


OUTPUT_TYPES = ("nifti", "dicom-seg", "both")


def _check_output_type(output_type: str, sources: Sequence[ScanSource]) -> None:
    """A DICOM SEG references its source series: only DICOM inputs can have one."""
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"--output-type {output_type}: choose one of {', '.join(OUTPUT_TYPES)}")
    if output_type != "nifti":
        for src in sources:
            if src.series_uid is None:
                raise InputError(
                    f"{src.shown}: --output-type {output_type} needs a DICOM series as input "
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
            if not same_grid(mask.shape, affine, scan.array.shape, scan.affine):
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


def _ood_check(bundle: Any, options: Any, scan: Scan, lung: LungMask | None) -> dict[str, Any]:
    """The scan's ``out_of_distribution`` block against the bundle's training scans."""
    if not options.ood_check:
        return ood.unavailable(OOD_OFF)
    if bundle.training_stats is None:
        return ood.unavailable()
    features = ood.scan_features(
        scan.array, scan.affine, None if lung is None else lung.mask, bundle.recipe.hu_window
    )
    return ood.check_scan(bundle.training_stats, features, ood.OodMargins.of(options))


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
    threshold, min_component_mm3, min_involvement_pct); unset (None) ones come from the
    bundle, then from ``PredictConfig``'s defaults and the recipe. A scan that fails does
    not stop the others; the run then ends with an :class:`InputError` naming it, after the
    summary (finished scans plus the failures) is written. See the module docstring.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise InputError("no input scans given")
    with unpacked_inputs(items, series) as sources:  # archives unpacked for the whole run
        return _predict_sources(
            model,
            sources,
            out_dir,
            lungs=lungs,
            use_lungs=use_lungs,
            write_prob=write_prob,
            write_types=write_types,
            output_type=output_type,
            overlays=overlays,
            reference=reference,
            num_parts=num_parts,
            part_id=part_id,
            device=device,
            **overrides,
        )


def _predict_sources(
    model: str | Path,
    sources: list[ScanSource],
    out_dir: Path,
    *,
    lungs: str | Path | None,
    use_lungs: bool,
    write_prob: bool,
    write_types: bool,
    output_type: str,
    overlays: bool,
    reference: str | Path | None,
    num_parts: int,
    part_id: int,
    device: str | None,
    **overrides: Any,
) -> Path:
    """:func:`run_predict` once its inputs are listed (and archives unpacked)."""
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
    predictor = Predictor.from_bundle(bundle, overrides)
    options = predictor.options
    log.info("predicting %d scan(s) on %s with %s", len(sources), dev, bundle.path)
    if options.ood_check and bundle.training_stats is None:
        log.info("out-of-distribution check unavailable: %s", ood.UNAVAILABLE)
    review = review_provenance(bundle, overrides, options.review_disagreement)
    if options.uncertainty:
        log.info(
            "needs_review at uncertainty_score >= %.4g (from the %s)",
            options.review_disagreement,
            "validation scans" if review["review_threshold_source"] == "validation" else "settings",
        )
    foreign: list[str] = []
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
                check = _ood_check(bundle, options, scan, lung)
                result = predictor.predict(
                    scan.array, scan.affine, None if lung is None else lung.mask
                )
                lung = _with_lesion(lung, result.lungs, scan)
                row = write_outputs(
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
                    check,
                    review,
                )
            except InputError as exc:
                exc = src.explain(exc)
                if len(sources) > 1:
                    log.warning("%s; going on with the other scans", exc)
                failed.append((src, exc))
                rows.append({"id": src.id, "input": str(src.shown), "error": str(exc)})
                continue
            rows.append(row | {"seconds": round(time.perf_counter() - start, 3)})
            if check["flagged"]:
                foreign.append(scan.id)
        ood.report_flagged(foreign, len(rows))
        if len(failed) == len(rows):
            raise _failure(failed, len(rows), None)
        name = f"summary_part{part_id}.csv" if sharded else "summary.csv"
        summary = write_text_atomic(out_dir / name, summary_csv(rows))
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


def run_predict_split(cfg: Any) -> Path:
    """The predict stage of a run: the test split with ``<run_dir>/finetune/model.pt`` into
    ``<run_dir>/predict``, with the config's ``predict`` settings over the bundle's."""
    from volseg.inference.predictor import predict_overrides

    bundle = rundir.bundle_path(cfg.run_dir)
    if not bundle.is_file():
        raise InputError(f"{bundle}: fine-tuned model not found (run the finetune stage)")
    studies = rundir.test_studies(cfg)
    out_dir = rundir.stage_path(cfg.run_dir, "predict")
    p = cfg.predict
    run_predict(
        bundle,
        [Path(s.image) for s in studies],
        out_dir,
        lungs=rundir.lungs_folder(cfg, studies),
        use_lungs=p.restrict_to_lungs,
        write_prob=p.write_prob,
        write_types=p.write_types,
        **predict_overrides(p),
    )
    return out_dir
