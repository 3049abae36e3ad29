"""The gan stage: train the healthy-lung GAN, then pseudo-masks for unlabeled COVID scans.

Writes, under ``<run_dir>/gan/``::

    checkpoint_last.pt / checkpoint_best.pt   generator + discriminator (engine checkpoints)
    metrics.jsonl, tb/                        training logs
    pseudo_masks/<id>_pseudo.nii.gz           uint8 pseudo-mask, the study's own geometry
    pseudo_masks/<id>_prob.nii.gz             float32 soft map (0.5 = the threshold)
    qc.csv                                    per-scan QC; fine-tuning uses passed=True rows
    pseudo_summary.json                       threshold, how it was chosen, QC counts

Pseudo-masks are made for every unlabeled COVID (CT-1..CT-4) scan of the train and val
splits and for nothing else: test scans are never read. The threshold is calibrated (best
mean Dice) on the labeled VAL scans, the masks every run already uses to pick checkpoints,
so it does not depend on how many training masks fine-tuning gets (``finetune.n_labeled``:
a 0- or 2-label study arm must not borrow the other training masks through the threshold).
Without labeled val scans it is calibrated on the labeled TRAIN scans, and without either
it is taken from the residuals left on healthy TRAIN scans; ``gan.threshold`` overrides
all three. Whether the stage is up to date is the run manifest's business
(:mod:`volseg.pipeline.manifest`); when it runs, every pseudo-mask is made anew.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from volseg.config import Config
from volseg.data import layout
from volseg.data.mosmed import Study
from volseg.errors import InputError
from volseg.io import write_json_atomic
from volseg.progress import progress
from volseg.rundir import PSEUDO_DIR, QC_FILE, stage_dir
from volseg.stages.common import Prepared, load_prepared, recipe_of
from volseg.utils import same_grid

log = logging.getLogger(__name__)

SUMMARY_FILE = "pseudo_summary.json"
PSEUDO_SPLITS = ("train", "val")
MASK_LEVEL = 0.5
"""The soft map is ``residual / (2 · threshold)``, so the mask is ``prob >= 0.5``."""


def pseudo_targets(prepared: Prepared) -> list[Study]:
    """The scans that get pseudo-masks: unlabeled COVID scans of the train and val splits."""
    return prepared.datalist.covid_unlabeled(PSEUDO_SPLITS)


class ResidualMaker:
    """Smoothed in-lung residuals of cached working-grid volumes under one generator."""

    def __init__(self, cfg: Config, generator: Any, device: Any) -> None:
        self.cfg = cfg
        self.generator = generator
        self.device = device

    def __call__(self, vol: Any) -> np.ndarray:
        from volseg.pseudo.residual import residual_map, restore_volume

        image = np.asarray(vol.image(mmap=False), dtype=np.float32)
        lungs = vol.lungs()
        if lungs is None:
            raise InputError(f"{vol.folder / vol.id}: cache entry has no lung mask")
        gan = self.cfg.gan
        restored = restore_volume(
            self.generator,
            image,
            gan.patch_size,
            overlap=gan.overlap,
            sw_batch_size=gan.sw_batch_size,
            device=self.device,
        )
        return residual_map(image, restored, lungs, vol.spacing, gan.smoothing_sigma_mm)


def choose_threshold(
    cfg: Config, prepared: Prepared, residual_of: ResidualMaker
) -> tuple[float, dict[str, Any]]:
    """The residual threshold and a record of how it was chosen (for the summary)."""
    from volseg.pseudo.threshold import calibrate_threshold, healthy_threshold

    gan = cfg.gan
    if gan.threshold is not None:
        return float(gan.threshold), {"method": "config", "source": "gan.threshold"}
    dl = prepared.datalist
    labeled, split = [], ""
    for split in ("val", "train"):
        labeled = [v for v in prepared.volumes_of(dl.labeled(split)) if v.has_label]
        if labeled:
            break
    if labeled:
        residuals, masks, spacings = [], [], []
        for vol in progress(labeled, desc="calibrate"):
            residuals.append(residual_of(vol))
            masks.append(np.asarray(vol.label()) > 0)
            spacings.append(vol.spacing)
        cal = calibrate_threshold(residuals, masks, spacings, gan.min_component_mm3)
        log.info(
            "gan: threshold %.4g calibrated on %d labeled %s scans (mean Dice %.3f)",
            cal.threshold,
            len(labeled),
            split,
            cal.score,
        )
        return cal.threshold, {
            "method": "calibrated",
            "split": split,
            "studies": [v.id for v in labeled],
            "mean_dice": cal.score,
            "candidates": cal.candidates,
            "scores": cal.scores,
        }
    healthy = prepared.volumes_of(dl.healthy("train"))
    residuals = [residual_of(v) for v in progress(healthy, desc="healthy residuals")]
    value = healthy_threshold(residuals, [v.lungs() for v in healthy], gan.healthy_percentile)
    log.info(
        "gan: no labeled val/train scans; threshold %.4g = %g th percentile of healthy residuals",
        value,
        gan.healthy_percentile,
    )
    return value, {
        "method": "healthy_percentile",
        "studies": [v.id for v in healthy],
        "percentile": gan.healthy_percentile,
    }


def write_pseudo_mask(
    cfg: Config, study: Study, vol: Any, residual: np.ndarray, threshold: float, out: Path
) -> dict[str, Any]:
    """Write one study's soft map and mask in its source geometry; returns its quantification.

    The working-grid soft map goes back onto the study's own grid by the recipe's inverse
    (the predictor's), is thresholded at 0.5 there, restricted to the lungs and cleaned of
    specks.
    """
    import torch

    from volseg.io import load_nifti, read_nifti, write_nifti
    from volseg.pseudo.residual import soft_map
    from volseg.pseudo.threshold import binarize
    from volseg.quantify import quantify, spacing_from_affine

    source = load_nifti(study.image)
    affine = np.asarray(source.affine, dtype=np.float64)
    shape = tuple(int(s) for s in source.shape[:3])
    if not same_grid(shape, affine, vol.source_shape, vol.source_affine):
        raise InputError(f"{study.image}: changed since 'volseg prepare' cached it; re-run prepare")
    soft = torch.from_numpy(soft_map(residual, threshold))[None, None]
    prob = vol.working(recipe_of(cfg)).to_native(soft)[0, 0].clamp_(0.0, 1.0).numpy()
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    lungs = None
    if study.lungs is not None:
        lungs = read_nifti(study.lungs)[0] > 0
        if lungs.shape != shape:
            raise InputError(f"{study.lungs}: lung mask shape {lungs.shape} is not {shape}")
        prob *= lungs
    spacing = spacing_from_affine(affine)
    mask = binarize(prob, MASK_LEVEL, spacing, cfg.gan.min_component_mm3)
    write_nifti(layout.pseudo_prob_path(out, study.id), prob, affine, like=source)
    write_nifti(layout.pseudo_path(out, study.id), mask.astype(np.uint8), affine, like=source)
    return quantify(mask, lungs, spacing)


def make_pseudo_masks(
    cfg: Config, prepared: Prepared, weights: Path, selection: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Pseudo-masks, QC table and summary from the generator in ``weights``; returns the
    summary. ``selection`` (how the checkpoint was chosen) is recorded in it."""
    from volseg.engine import select_device
    from volseg.pseudo.qc import make_row, write_qc
    from volseg.stages.gan_train import load_generator

    folder = stage_dir(cfg, "gan")
    out = folder / PSEUDO_DIR
    targets = pseudo_targets(prepared)
    out.mkdir(parents=True, exist_ok=True)
    keep = {
        p.name
        for s in targets
        for p in (layout.pseudo_path(out, s.id), layout.pseudo_prob_path(out, s.id))
    }
    for stale in out.glob("*.nii.gz"):
        if stale.name not in keep:
            stale.unlink()

    device = select_device()
    residual_of = ResidualMaker(cfg, load_generator(weights, device), device)
    threshold, how = choose_threshold(cfg, prepared, residual_of)
    rows = []
    for study in progress(targets, desc="pseudo-masks"):
        vol = prepared.volumes.get(study.id)
        if vol is None:
            raise InputError(f"{study.id}: not in the preprocessing cache; re-run 'volseg prepare'")
        residual = residual_of(vol)
        q = write_pseudo_mask(cfg, study, vol, residual, threshold, out)
        split = prepared.datalist.split_of(study.id)
        rows.append(make_row(study.id, split, study.category, q, cfg.gan.max_involvement_pct))
    write_qc(folder / QC_FILE, rows)
    failed = [r for r in rows if not r.passed]
    for r in failed:
        log.warning(
            "gan: %s (%s) fails QC, excluded from fine-tuning: %s", r.study_id, r.category, r.reason
        )
    summary = {
        "threshold": threshold,
        "threshold_choice": how,
        "weights": str(weights),
        "checkpoint": selection or {},
        "n_scans": len(rows),
        "n_passed": len(rows) - len(failed),
        "failed": {r.study_id: r.reason for r in failed},
        "scans": [asdict(r) for r in rows],
    }
    write_json_atomic(folder / SUMMARY_FILE, summary)
    log.info(
        "gan: %d pseudo-masks in %s (threshold %.4g, %s); %d passed QC",
        len(rows),
        out,
        threshold,
        how["method"],
        summary["n_passed"],
    )
    if "mean_dice" in how:
        log.info(
            "gan: pseudo-mask Dice %.3f on the %d labeled %s scans the threshold was set on",
            how["mean_dice"],
            len(how["studies"]),
            how["split"],
        )
    return summary


def check_gan(cfg: Config) -> None:
    """What the GAN needs from the config (generator and discriminator arguments), checked
    without writing or allocating."""
    import torch

    from volseg.stages.gan_train import build_networks

    if not cfg.gan.enabled:
        return
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        build_networks(cfg)


def run_gan(cfg: Config, resume: bool = True) -> Path:
    """Train the GAN (resumable) and write pseudo-masks + QC; returns ``<run_dir>/gan``."""
    from volseg.engine import barrier, dist_info
    from volseg.stages.gan_train import train_gan

    check_gan(cfg)
    prepared = load_prepared(cfg)  # inputs first: a missing prepare leaves no folder behind
    folder = stage_dir(cfg, "gan")
    result = train_gan(cfg, prepared, resume=resume)
    weights = result.best if result.best is not None else result.last
    selection = {
        "metric": result.best_metric_name,
        "value": result.best_metric,
        "epoch": result.best_epoch,
    }
    if dist_info().is_main:
        make_pseudo_masks(cfg, prepared, Path(weights), selection)
    barrier()
    return folder
