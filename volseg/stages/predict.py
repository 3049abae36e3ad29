"""``volseg predict``: masks, probabilities, quantification and overlays for a batch of scans.

Before any computation every input is checked from its headers (readable 3D NIfTI with a
usable grid, DICOM series complete and evenly spaced, no two inputs with the same id), so a
bad header stops the run with one error before anything is written. Scans are pipelined
(:mod:`volseg.inference.pipeline`): the next scan is decoded, lung-masked and given its
lesion region (the lungs grown by the margin), and the previous one's mask is cleaned
(threshold, lung restriction, small lesions, the gate) and its files written, in background
threads while a scan is on the device. A scan whose content is not a CT in Hounsfield units
(NaN voxels, blank, raw 0..4095 values) fails when it is decoded.

Outputs per scan, written atomically: ``<id>_mask.nii.gz`` (uint8, the input's exact
shape/affine/header), optional ``<id>_prob.nii.gz`` and ``<id>_types.nii.gz`` (1 ground
glass, 2 consolidation) and, with ``uncertainty``, ``<id>_uncertainty.nii.gz`` (the spread
of the eight flipped predictions per voxel), ``<id>.json`` (volumes, involvement, CT grade,
ground-glass and consolidation burden, per lung too) and optional overlays; plus one
``summary.csv``, its rows in the inputs' order (``summary_part{i}.csv`` with ``--num-parts``;
under ``torchrun`` every rank predicts its share and rank 0 writes the one ``summary.csv`` of
all of them from rows gathered through the process group, so there are no part files). When
a scan fails, the others are still predicted: each finished scan's outputs are complete,
``summary.csv`` lists every scan with the failures' ``error``, and the run ends with an error
naming the failed file (exit code 2; under ``torchrun`` every rank ends so, once the summary
is written). When no scan finishes, nothing is written.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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
from volseg.inference.pipeline import pipelined
from volseg.inference.predictor import (
    FlipProbabilities,
    Predictor,
    lung_mask_for,
    region_for,
)
from volseg.inference.review import review_provenance
from volseg.inference.scans import Scan, ScanSource, check_source, load_scan
from volseg.inference.timing import PhaseTimes, span
from volseg.io import (
    cleanup_on_error,
    read_nifti,
    write_text_atomic,
)
from volseg.progress import progress
from volseg.quantify import spacing_from_affine
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
    """Fail fast on bad headers, before any output exists."""
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


def _lungs_for(
    scan: Scan, lungs: Path | None, use_lungs: bool
) -> tuple[LungMask | None, list[str]]:
    """The scan's lung mask with its QC: given (``--lungs``) or computed; and the warnings
    to log (returned, not logged: this may run in a decoder process)."""
    if not use_lungs:
        return None, []
    result, notes = None, []
    if lungs is not None:
        file = lungs if lungs.is_file() else lungs_path(lungs, scan.id)
        if file.exists():
            mask, affine = read_nifti(file)
            if not same_grid(mask.shape, affine, scan.array.shape, scan.affine):
                raise InputError(f"{file}: lung mask geometry differs from {scan.source.path}")
            result = LungMask.of_mask(mask > 0, scan.array, scan.affine)
        else:
            notes.append(f"no lung mask at {file}, computing one")
    if result is None:
        result = lung_mask_for(scan.array, scan.affine)
    return result, notes + list(result.warnings)


def _with_lesion(lung: LungMask | None, used: np.ndarray | None, scan: Scan) -> LungMask | None:
    """The lung QC of the lungs involvement was measured in: the lung mask plus predicted
    lesion just outside it (consolidation the mask left out), when there is any."""
    if lung is None or used is None or np.count_nonzero(used) == np.count_nonzero(lung.mask):
        return lung
    return LungMask.of_mask(used, scan.array, scan.affine)


def _ood_check(settings: _DecodeSettings, scan: Scan, lung: LungMask | None) -> dict[str, Any]:
    """The scan's ``out_of_distribution`` block against the bundle's training scans."""
    if not settings.options.ood_check:
        return ood.unavailable(OOD_OFF)
    if settings.training_stats is None:
        return ood.unavailable()
    features = ood.scan_features(
        scan.array, scan.affine, None if lung is None else lung.mask, settings.hu_window
    )
    return ood.check_scan(settings.training_stats, features, ood.OodMargins.of(settings.options))


@dataclass(frozen=True)
class _DecodeSettings:
    """What decoding a scan needs (picklable: decoders may be worker processes)."""

    lungs: Path | None
    use_lungs: bool
    training_stats: Any
    hu_window: tuple[float, float]
    options: Any  # PredictOptions


@dataclass
class _Decoded:
    """One scan read, with its lung mask and OOD check, before the device; the seconds
    its decode and lung phases took (charged to the run's timings by the compute step)."""

    scan: Scan
    lung: LungMask | None
    region: np.ndarray | None  # where lesions are kept: the lungs grown by the margin
    check: dict[str, Any]
    warnings: list[str]  # the lung mask's, logged by the compute step
    decode_s: float
    lungs_s: float


def decode_scan(src: ScanSource, settings: _DecodeSettings) -> _Decoded:
    """The scan, its lung mask, the region lesions are kept in and the out-of-distribution
    check: CPU work that overlaps the previous scan's network (in a decoder thread or
    worker process), so the device's thread does little more than the network."""
    start = time.perf_counter()
    scan = load_scan(src)
    read = time.perf_counter()
    lung, warnings = _lungs_for(scan, settings.lungs, settings.use_lungs)
    spacing = spacing_from_affine(scan.affine)
    region = region_for(None if lung is None else lung.mask, spacing, settings.options)
    check = _ood_check(settings, scan, lung)
    return _Decoded(scan, lung, region, check, warnings, read - start, time.perf_counter() - read)


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
    timings: PhaseTimes | None = None,
    decode_workers: int = 0,
    **overrides: Any,
) -> Path:
    """Predict every scan in ``inputs`` with the bundle at ``model``; returns the summary CSV.

    ``overrides`` are :class:`PredictOptions` fields (roi_size, overlap, sw_batch_size, tta,
    precision, threshold, min_component_mm3, min_involvement_pct); unset (None) ones come from the
    bundle, then from ``PredictConfig``'s defaults and the recipe. A scan that fails does
    not stop the others; the run then ends with an :class:`InputError` naming it, after the
    summary (finished scans plus the failures) is written. See the module docstring.
    ``timings`` collects the seconds per phase (:mod:`volseg.inference.timing`).
    ``decode_workers``: decode and lung-mask scans in that many worker processes instead
    of one thread (for machines with cores to spare beside the device; 0: the thread).
    """
    if decode_workers < 0:
        raise InputError(f"--decode-workers must be >= 0, got {decode_workers}")
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
            timings=timings,
            decode_workers=decode_workers,
            **overrides,
        )


@dataclass
class _Computed:
    """One scan between the device and its writer: the network's probabilities on the
    native grid, and what the writer cleans them with."""

    scan: Scan
    flips: FlipProbabilities
    lung: LungMask | None
    region: np.ndarray | None
    check: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class _Job:
    """What every scan of a run shares; its methods are the pipeline's three stages."""

    bundle: Any
    predictor: Predictor
    out_dir: Path
    lungs: Path | None
    use_lungs: bool
    write_prob: bool
    overlays: bool
    write_types: bool
    output_type: str
    reference: Path | None
    review: dict[str, Any]
    times: PhaseTimes | None

    @property
    def decode_settings(self) -> _DecodeSettings:
        bundle = self.bundle
        window = tuple(float(v) for v in bundle.recipe.hu_window)
        return _DecodeSettings(
            self.lungs, self.use_lungs, bundle.training_stats, window, self.predictor.options
        )

    def compute(self, src: ScanSource, decoded: _Decoded) -> _Computed:
        """The network's probabilities (the caller's thread, which holds the device)."""
        start = time.perf_counter()
        if self.times is not None:
            self.times.add("decode", decoded.decode_s)
            self.times.add("lungs", decoded.lungs_s)
        scan = decoded.scan
        for warning in decoded.warnings:
            log.warning("%s: %s", scan.id, warning)
        lungs = None if decoded.lung is None else decoded.lung.mask
        flips = self.predictor.flip_probabilities(scan.array, scan.affine, lungs)
        check = decoded.check
        if self.predictor.recipe.lung_density_hu is not None:  # null: not aligned (no lungs)
            shift = flips.lung_shift_hu
            check = check | {"lung_density_shift_hu": None if shift is None else round(shift, 1)}
        seconds = decoded.decode_s + decoded.lungs_s + time.perf_counter() - start
        return _Computed(scan, flips, decoded.lung, decoded.region, check, seconds)

    def write(self, src: ScanSource, done: _Computed) -> dict[str, Any]:
        """The cleaned mask, the lungs it was measured in, and the scan's files (a writer
        thread); its summary row, ``seconds`` being the scan's own decode, compute, clean-up
        and write time (not the time it waited in the pipeline)."""
        start = time.perf_counter()
        scan, lung = done.scan, done.lung
        result = self.predictor.cleaned(
            done.flips, scan.affine, None if lung is None else lung.mask, done.region
        )
        with span(self.times, "lungs", on_device=False):
            lung = _with_lesion(lung, result.lungs, scan)
        with span(self.times, "write", on_device=False):
            row = write_outputs(
                scan,
                result,
                lung,
                self.out_dir,
                self.bundle.path,
                self.predictor.options,
                self.write_prob,
                self.overlays,
                self.write_types,
                self.output_type,
                self.reference,
                done.check,
                self.review,
            )
        return row | {"seconds": round(done.seconds + time.perf_counter() - start, 3)}


DECODERS = 1
"""Decoder threads (scans decoded ahead); a second one measured no faster on 2 CPU cores
(bench/README.md)."""
WRITERS = 1
"""Writer threads (scans waiting for their files). One keeps the files' order on disk; a
second one measured no faster on 2 CPU cores (bench/README.md)."""


def _decoder_process() -> None:
    """A decoder worker process: one compute thread (the parent's network has the rest)."""
    import torch

    torch.set_num_threads(1)


def _predict_scans(
    job: _Job, sources: Sequence[ScanSource], decode_workers: int = 0
) -> tuple[list[dict[str, Any]], list[InputError]]:
    """Every scan through the pipeline: one summary row each, in order (failures with their
    ``error``), and the failures' errors."""
    rows: list[dict[str, Any]] = []
    errors: list[InputError] = []
    decode = functools.partial(decode_scan, settings=job.decode_settings)
    pool = None
    if decode_workers > 0:  # fresh interpreters: no inherited device or thread state
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(decode_workers, context, initializer=_decoder_process)
    results = pipelined(
        sources,
        decode,
        job.compute,
        job.write,
        decoders=decode_workers or DECODERS,
        writers=WRITERS,
        decode_pool=pool,
    )
    for src, row in progress(results, total=len(sources), desc="predict", unit="scan"):
        if isinstance(row, InputError):
            exc = src.explain(row)
            if len(sources) > 1:
                log.warning("%s; going on with the other scans", exc)
            errors.append(exc)
            row = {"id": src.id, "input": str(src.shown), "error": str(exc)}
        rows.append(row)
    return rows, errors


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
    timings: PhaseTimes | None,
    decode_workers: int,
    **overrides: Any,
) -> Path:
    """:func:`run_predict` once its inputs are listed (and archives unpacked)."""
    dist = _distributed_part()
    joined = dist is not None and num_parts == 1  # torchrun: one summary from every rank
    if joined:
        num_parts, part_id = dist
    _check_ids(sources)
    mine = shard(sources, num_parts, part_id)
    _check_inputs(mine)
    _check_output_type(output_type, mine)
    if reference is not None and not Path(reference).exists():
        raise InputError(f"{reference}: reference mask file or folder not found (--ref)")
    lungs_arg = Path(lungs) if lungs is not None else None
    if use_lungs and lungs_arg is not None and not lungs_arg.exists():
        raise InputError(f"{lungs_arg}: lung mask file or folder not found (--lungs)")
    dev = _device(device, dist is not None)
    made_group = _join_group() if joined else False
    bundle = load_bundle(model, dev)
    predictor = _without_gate_if_no_lungs(Predictor.from_bundle(bundle, overrides), use_lungs)
    options = predictor.options
    if timings is not None and dev.type == "cuda":
        timings.sync = _cuda_sync(dev)
    predictor.times = timings
    log.info("predicting %d scan(s) on %s with %s", len(mine), dev, bundle.path)
    if options.ood_check and bundle.training_stats is None:
        log.info("out-of-distribution check unavailable: %s", ood.UNAVAILABLE)
    review = review_provenance(bundle, overrides, options.review_disagreement)
    if options.uncertainty:
        log.info(
            "needs_review at uncertainty_score >= %.4g (from the %s)",
            options.review_disagreement,
            "validation scans" if review["review_threshold_source"] == "validation" else "settings",
        )
    job = _Job(
        bundle,
        predictor,
        out_dir,
        lungs_arg,
        use_lungs,
        write_prob,
        overlays,
        write_types,
        output_type,
        None if reference is None else Path(reference),
        review,
        timings,
    )
    name = f"summary_part{part_id}.csv" if num_parts > 1 and not joined else "summary.csv"
    with cleanup_on_error(out_dir):
        rows, errors = _predict_scans(job, mine, decode_workers)
        if joined:
            rows = _gathered_rows(rows, sources)
            errors = [InputError(r["error"]) for r in rows if r.get("error")]
        writer = not joined or part_id == 0  # under torchrun rank 0 speaks for the job
        if writer:
            ood.report_flagged([r["id"] for r in rows if r.get("out_of_distribution")], len(rows))
            _report_gated(rows, options.min_involvement_pct)
        if len(errors) == len(rows):
            if joined:
                _leave_group(made_group)
            raise _failure(errors, len(rows), None)
        summary = out_dir / name
        if writer:
            write_text_atomic(summary, summary_csv(rows))
    if joined:
        _leave_group(made_group)  # after rank 0 wrote the summary: no rank exits before
    if errors:
        raise _failure(errors, len(rows), summary)
    return summary


def _without_gate_if_no_lungs(predictor: Predictor, use_lungs: bool) -> Predictor:
    """``predictor`` without its lesion-presence gate under ``--no-lungs``: the gate is a
    share of the lung volume, so it cannot apply. Said once for the run, and each scan's
    JSON records the gate as 0 (what was applied)."""
    gate = predictor.options.min_involvement_pct
    if use_lungs or gate <= 0:
        return predictor
    log.warning(
        "--no-lungs: the lesion-presence gate (%.3g %% of the lungs) needs a lung mask and "
        "is not applied",
        gate,
    )
    return predictor.with_options(dataclasses.replace(predictor.options, min_involvement_pct=0.0))


def _report_gated(rows: Sequence[dict[str, Any]], gate_pct: float) -> None:
    """One console warning for the run: the scans whose lesions the lesion-presence gate
    emptied. On real anatomy a model can find mild disease below a gate chosen on
    synthetic validation scans (docs/synth.md), so the user is told where to look."""
    gated = [str(r["id"]) for r in rows if r.get("gated")]
    if gated:
        log.warning(
            "the lesion-presence gate (%.3g %% of the lungs) emptied the masks of %d of %d "
            "scan(s), called CT-0 (what it emptied: gated_involvement_pct in summary.csv): "
            "%s. Right for healthy scans; on scans known to hold lesions, predict with "
            "--min-involvement 0",
            gate_pct,
            len(gated),
            len(rows),
            ", ".join(gated),
        )


def _check_ids(sources: Sequence[ScanSource]) -> None:
    """No two inputs with one id, over all inputs (before sharding): their outputs, and
    their rows of a merged summary, would overwrite each other."""
    seen: dict[str, ScanSource] = {}
    for src in sources:
        other = seen.setdefault(src.id, src)
        if other is not src:
            raise InputError(
                f"{other.shown} and {src.shown} have the same id '{src.id}'; their outputs "
                "would overwrite each other (rename one or predict them separately)"
            )


def _join_group() -> bool:
    """Join the torchrun job's process group (gloo on CPU, NCCL on GPU) unless one is
    already initialised; True when this call made it (and so must destroy it)."""
    import torch.distributed as torch_dist

    from volseg.engine.distributed import init_distributed

    made = not (torch_dist.is_available() and torch_dist.is_initialized())
    init_distributed()
    return made


def _leave_group(made: bool) -> None:
    """Barrier, then destroy the process group if :func:`_join_group` made it."""
    from volseg.engine.distributed import barrier, cleanup_distributed

    if made:
        cleanup_distributed()
    else:
        barrier()


def _gathered_rows(
    rows: list[dict[str, Any]], sources: Sequence[ScanSource]
) -> list[dict[str, Any]]:
    """Every rank's summary rows (a collective: every rank calls it), in the order of
    ``sources`` (all inputs, before sharding)."""
    from volseg.engine.distributed import all_gather_object

    by_id = {row["id"]: row for part in all_gather_object(rows) for row in part}
    return [by_id[src.id] for src in sources]


def _cuda_sync(dev: Any) -> Any:
    """A function that waits for ``dev``'s queued kernels (phase timing on CUDA)."""
    import torch

    return lambda: torch.cuda.synchronize(dev)


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


def _failure(errors: list[InputError], total: int, summary: Path | None) -> InputError:
    """One error for the failed scans: the first one's message and what became of the rest."""
    first = str(errors[0])
    if summary is None:
        if total == 1:
            return errors[0]
        return InputError(f"{first} (every one of the {total} scans failed; nothing written)")
    done = total - len(errors)
    return InputError(
        f"{first} ({len(errors)} of {total} scans failed; the other {done} finished, "
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
