"""The finetune stage: a 3D TransUNet trained on few true masks plus QC-passed pseudo-masks.

Reads ``prepare``'s cache, optionally ``<run_dir>/pretrain/encoder.pt`` (Barlow Twins
encoder) and ``<run_dir>/gan/qc.csv`` + ``gan/pseudo_masks`` (GAN pseudo-masks). Writes,
under ``<run_dir>/finetune/``::

    labeled.json         which labeled training scans were used (``finetune.n_labeled``)
    checkpoint_last.pt   engine checkpoints (resume), checkpoint_best.pt (best val Dice)
    metrics.jsonl, tb/   training and validation logs
    model.pt             the bundle ``volseg predict -m <run_dir>`` loads (best weights)
    summary.json         best val Dice and epoch, labeled/pseudo/val ids

Training data: labeled TRAIN scans (weight 1) and pseudo-labeled TRAIN scans (weight
``finetune.pseudo_weight``). Pseudo-masks of val-split scans are never trained on, so the
validation split stays untouched by training. Validation: labeled VAL scans only
(:mod:`volseg.stages.validation`). Loss: :class:`volseg.losses.FinetuneLoss` with a voxel
projection head on the decoder embedding for the supervised contrastive term (trained
jointly, not part of the bundle).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg.config import Config, FinetuneConfig
from volseg.data import layout
from volseg.data.mosmed import Study
from volseg.errors import ConfigError, InputError
from volseg.io import write_json_atomic
from volseg.pseudo.qc import passed_ids
from volseg.stages import validation
from volseg.stages.common import (
    Prepared,
    load_prepared,
    model_kwargs,
    preprocessing_of,
    stage_dir,
)
from volseg.stages.gan import pseudo_dir, qc_path
from volseg.stages.pretrain import ENCODER_FILE, read_encoder

log = logging.getLogger(__name__)

STAGE = "finetune"
LABELED_FILE = "labeled.json"
SUMMARY_FILE = "summary.json"
PROJECTION_DIM = 64
"""Output width of the voxel projection head feeding the supervised contrastive loss."""


# ----------------------------------------------------------------------------- paths


def encoder_path(run_dir: str | Path) -> Path:
    """Where the pretrain stage writes the Barlow Twins encoder."""
    return Path(run_dir) / "pretrain" / ENCODER_FILE


# ----------------------------------------------------------------------------- network


class FinetuneNet(nn.Module):
    """Segmentation network plus an optional voxel projection head, as one module.

    ``forward(x) -> (logits, projected embeddings or None)``. One module so DDP sees the
    embedding branch through ``forward``; the bundle keeps only ``seg``.
    """

    def __init__(self, seg: nn.Module, proj: nn.Module | None) -> None:
        super().__init__()
        self.seg = seg
        self.proj = proj

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.proj is None:
            return self.seg(x), None
        logits, emb = self.seg.forward_with_embedding(x)
        return logits, self.proj(emb)


def _normalised(obj: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float spellings) compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def load_pretrained_encoder(
    model: nn.Module, path: str | Path, name: str, params: dict[str, Any]
) -> None:
    """Load ``path`` (pretrain's ``encoder.pt``) strictly into ``model.encoder``.

    ``name``/``params`` describe ``model``; an encoder pretrained for another network or
    other constructor arguments is an :class:`InputError` naming the differing keys.
    """
    path = Path(path)
    payload = read_encoder(path)
    info = payload.get("model") or {}
    if info.get("name") != name:
        raise InputError(
            f"{path}: encoder was pretrained for model '{info.get('name')}', but model.name "
            f"is '{name}'; re-run pretrain or set finetune.init: scratch"
        )
    theirs, mine = _normalised(info.get("params") or {}), _normalised(params)
    if theirs != mine:
        keys = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        diffs = ", ".join(f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in keys)
        raise InputError(
            f"{path}: encoder was pretrained with other model.params ({diffs}; pretrained vs "
            f"now); re-run pretrain or set finetune.init: scratch"
        )
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise InputError(f"model '{name}' has no encoder to initialise from {path}")
    try:
        encoder.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise InputError(f"{path}: encoder weights do not fit model '{name}' ({first})") from exc


def _init_encoder(cfg: Config, model: nn.Module) -> str | None:
    """Initialise from the pretrained encoder when asked and available; returns its path."""
    if cfg.finetune.init != "pretrained":
        return None
    path = encoder_path(cfg.run_dir)
    if not cfg.pretrain.enabled:
        log.warning("finetune.init is 'pretrained' but pretrain is disabled: training from scratch")
        return None
    if not path.is_file():
        log.warning("%s not found (pretrain not run?): training from scratch", path)
        return None
    load_pretrained_encoder(model, path, cfg.model.name, model_kwargs(cfg))
    log.info("encoder initialised from %s", path)
    return str(path)


# ----------------------------------------------------------------------------- data


def select_labeled(studies: Sequence[Study], n: int | None, seed: int) -> list[Study]:
    """At most ``n`` of ``studies`` (all when None), chosen deterministically from ``seed``.

    Stratified by CT category: each category gets its share of ``n`` (largest remainder,
    ties to the category name), its members drawn in a seeded random order. Sorted by id.
    """
    studies = sorted(studies, key=lambda s: s.id)
    if n is None or n >= len(studies):
        return studies
    groups: dict[str, list[Study]] = {}
    for s in studies:
        groups.setdefault(s.category, []).append(s)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    for name in names:
        order = rng.permutation(len(groups[name]))
        groups[name] = [groups[name][i] for i in order]
    exact = {c: n * len(groups[c]) / len(studies) for c in names}
    quota = {c: int(math.floor(exact[c])) for c in names}
    for c in sorted(names, key=lambda c: (-(exact[c] - quota[c]), c))[: n - sum(quota.values())]:
        quota[c] += 1
    chosen = [s for c in names for s in groups[c][: quota[c]]]
    return sorted(chosen, key=lambda s: s.id)


def pseudo_sources(cfg: Config, prepared: Prepared) -> list[Any]:
    """Patch sources of the QC-passed pseudo-masks of unlabeled TRAIN scans, on the cache grid.

    Empty when pseudo-masks are switched off, the GAN is disabled or its QC table is absent.
    """
    from volseg.data.cache import mask_on_grid
    from volseg.data.patches import PatchSource

    ft = cfg.finetune
    table = qc_path(cfg.run_dir)
    if not ft.use_pseudo:
        return []
    if not cfg.gan.enabled:
        log.info("gan is disabled: no pseudo-masks")
        return []
    if not table.is_file():
        log.warning("%s not found (gan not run?): training without pseudo-masks", table)
        return []
    dl = prepared.datalist
    sources = []
    for sid in passed_ids(table):
        if sid not in dl.studies:
            raise InputError(f"{table}: study {sid} is not in this run's datalist")
        study = dl.studies[sid]
        if dl.split_of(sid) != "train" or study.labeled or study.healthy:
            log.debug("pseudo-mask of %s not used (split %s)", sid, dl.split_of(sid))
            continue
        vol = prepared.volumes.get(sid)
        if vol is None:
            raise InputError(f"{sid}: no cache entry (re-run 'volseg prepare')")
        mask_file = layout.pseudo_path(pseudo_dir(cfg.run_dir), sid)
        if not mask_file.is_file():
            raise InputError(f"{mask_file}: pseudo-mask listed as passed in {table} is missing")
        mask = mask_on_grid(mask_file, vol)
        sources.append(PatchSource.from_cached(vol, label=mask, weight=ft.pseudo_weight))
    log.info("pseudo-masks: %d QC-passed training scans", len(sources))
    return sources


def healthy_sources(cfg: Config, prepared: Prepared) -> list[Any]:
    """Patch sources of the unlabeled CT-0 TRAIN scans with an all-zero (true) mask.

    The mask is a zero-strided view (no memory per scan). Empty when
    ``finetune.use_healthy`` is off.
    """
    from volseg.data.patches import PatchSource

    if not cfg.finetune.use_healthy:
        return []
    sources = []
    for study in prepared.datalist.healthy("train"):
        if study.labeled:
            continue  # its own mask is already among the labeled scans' candidates
        vol = prepared.volumes.get(study.id)
        if vol is None:
            raise InputError(f"{study.id}: no cache entry (re-run 'volseg prepare')")
        empty = np.broadcast_to(np.uint8(0), tuple(vol.shape))
        sources.append(PatchSource.from_cached(vol, label=empty, weight=1.0))
    log.info("healthy (CT-0) scans as lesion-free examples: %d", len(sources))
    return sources


def source_probabilities(
    n_labeled: int, n_pseudo: int, n_healthy: int, ft: FinetuneConfig, *, pseudo: bool = True
) -> list[float] | None:
    """Per-source sampling probabilities for sources ordered labeled, pseudo, healthy.

    The healthy scans together get ``healthy_fraction`` and the lesion scans share the rest:
    evenly, or, with ``pseudo_fraction`` and both kinds present, that share of it to the
    pseudo-labeled scans and the remainder to the labeled ones. With ``pseudo=False`` the
    pseudo-labeled scans get 0 and the labeled scans take their share. None (uniform over
    all sources) when nothing needs weighting.
    """
    n_drawn = n_pseudo if pseudo else 0  # pseudo-labeled scans that are drawn at all
    n_lesion = n_labeled + n_drawn
    pseudo_fraction = ft.pseudo_fraction if n_labeled and n_drawn else None
    fraction = ft.healthy_fraction if n_healthy else None
    if n_healthy and fraction is not None and n_lesion == 0:
        raise InputError("finetune: healthy scans alone cannot train the network")
    if fraction is None and pseudo_fraction is None and n_drawn == n_pseudo:
        return None  # every source drawn alike
    if fraction is None:
        fraction = n_healthy / (n_lesion + n_healthy)  # uniform over lesion scans + healthy
    lesion_share = 1.0 - fraction
    if pseudo_fraction is None:  # the lesion scans drawn alike
        labeled_p = lesion_share / n_lesion
        pseudo_p = labeled_p if n_drawn else 0.0
    else:
        labeled_p = lesion_share * (1.0 - pseudo_fraction) / n_labeled
        pseudo_p = lesion_share * pseudo_fraction / n_drawn
    probs = [labeled_p] * n_labeled + [pseudo_p] * n_pseudo
    return probs + [fraction / n_healthy] * n_healthy if n_healthy else probs


def source_phases(
    n_labeled: int, n_pseudo: int, n_healthy: int, ft: FinetuneConfig, samples_per_step: int
) -> list[tuple[int, list[float] | None]]:
    """``SegPatchDataset.source_phases`` for ``finetune.pseudo_until``: from that share of
    the steps on, no pseudo-labeled crops (none needed when there is nothing to switch)."""
    if ft.pseudo_until >= 1.0 or n_pseudo == 0 or n_labeled == 0:
        return []
    switch_step = math.ceil(ft.pseudo_until * ft.epochs * ft.iters_per_epoch)
    probs = source_probabilities(n_labeled, n_pseudo, n_healthy, ft, pseudo=False)
    return [(switch_step * samples_per_step, probs)]


def _crop_shares(counts: Sequence[int], probs: Sequence[float] | None) -> str:
    """``labeled 50 %, pseudo 50 %, healthy 0 %`` for the log (uniform when ``probs`` is None)."""
    total = sum(counts)
    shares, start = [], 0
    for name, n in zip(("labeled", "pseudo", "healthy"), counts, strict=True):
        share = n / total if probs is None else sum(probs[start : start + n])
        shares.append(f"{name} {100 * share:.0f} %")
        start += n
    return ", ".join(shares)


# ----------------------------------------------------------------------------- stage


def _json_safe(obj: Any) -> Any:
    """NaN/inf (undefined metrics) to None, so summary.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _config_hash(cfg: Config) -> str:
    """Hash of every setting the stage's outputs depend on (a re-run with it is a no-op)."""
    parts = {
        name: cfg.section_hash(name)
        for name in ("data", "model", "gan", "pretrain", "finetune", "predict")
    }
    parts["seed"] = str(cfg.seed)
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(out: Path, cfg: Config) -> bool:
    summary = out / SUMMARY_FILE
    if not (summary.is_file() and (out / "model.pt").is_file()):
        return False
    try:
        return json.loads(summary.read_text()).get("config_hash") == _config_hash(cfg)
    except (OSError, ValueError):
        return False


def _optimizer(model: FinetuneNet, cfg: Config, pretrained: bool) -> torch.optim.Optimizer:
    """AdamW; a pretrained encoder learns at ``lr * encoder_lr_mult``."""
    from volseg.models import encoder_parameter_split

    ft = cfg.finetune
    enc, rest = encoder_parameter_split(model.seg)
    if model.proj is not None:
        rest = rest + list(model.proj.parameters())
    enc_lr = ft.lr * ft.encoder_lr_mult if pretrained else ft.lr
    groups = [{"params": enc, "lr": enc_lr}, {"params": rest, "lr": ft.lr}]
    return torch.optim.AdamW(groups, lr=ft.lr, weight_decay=ft.weight_decay)


def _model_from_checkpoint(cfg: Config, checkpoint: Path) -> Any:
    """The segmentation network with the weights of a training checkpoint."""
    from volseg.engine import load_model_weights
    from volseg.models import build_model

    state, _ = load_model_weights(checkpoint, "net")
    seg_state = {k[len("seg.") :]: v for k, v in state.items() if k.startswith("seg.")}
    model = build_model(cfg.model.name, **model_kwargs(cfg))
    model.load_state_dict(seg_state, strict=True)
    return model


def gate_healthy_studies(cfg: Config, datalist: Any) -> list[Study]:
    """The healthy scans the gate is calibrated on: CT-0 validation scans, plus the CT-0
    training scans when fine-tuning did not train on them (``use_healthy`` off). Every one
    is a scan the network never learned from, with an empty reference by definition; never
    a test scan."""
    splits = ("val",) if cfg.finetune.use_healthy else ("val", "train")
    return [s for s in datalist.healthy(splits) if not s.labeled]


def _calibrate_gate(cfg: Config, model: Any, prepared: Prepared) -> dict[str, Any]:
    """``finetune.calibrate_gate``: the lesion-presence gate, chosen on labeled validation
    scans and healthy scans the network did not train on (:func:`gate_healthy_studies`)."""
    dl = prepared.datalist
    labeled = prepared.volumes_of(dl.labeled("val"))
    healthy = prepared.volumes_of(gate_healthy_studies(cfg, dl))
    if not labeled or not healthy:
        log.warning(
            "finetune.calibrate_gate: needs labeled validation scans and healthy scans "
            "(%d and %d here): no gate",
            len(labeled),
            len(healthy),
        )
        return {"min_involvement_pct": 0.0, "cases": []}
    p = cfg.predict
    cases = validation.gate_cases(
        model,
        labeled,
        healthy,
        p.roi_size,
        overlap=p.overlap,
        sw_batch_size=p.sw_batch_size,
        threshold=p.threshold,
        lung_margin_mm=p.lung_margin_mm,
        device=next(model.parameters()).device,
    )
    gate = validation.choose_involvement_gate(cases)
    log.info(
        "finetune: lesion-presence gate %.3f %% of the lungs, chosen on %d labeled validation "
        "+ %d healthy scans (predicted involvement %s)",
        gate,
        len(labeled),
        len(healthy),
        ", ".join(f"{c.id} {c.involvement_pct:.2f}" for c in cases),
    )
    return {"min_involvement_pct": gate, "cases": [dataclasses.asdict(c) for c in cases]}


def _save_bundle(cfg: Config, model: Any, out: Path, extra: dict, gate: float | None) -> Path:
    """Write ``model.pt``; its predict defaults are the config's, with the calibrated gate."""
    from volseg.bundle import BUNDLE_NAME, save_bundle

    defaults = cfg.predict.model_dump(mode="json")
    if gate is not None:
        defaults["min_involvement_pct"] = gate
    elif defaults.get("min_involvement_pct") is None:
        defaults["min_involvement_pct"] = 0.0
    return save_bundle(
        out / BUNDLE_NAME,
        model,
        cfg.model.name,
        model_kwargs(cfg),
        preprocessing_of(cfg),
        predict_defaults=defaults,
        extra=extra,
    )


def check_finetune(cfg: Config) -> None:
    """What fine-tuning needs from the config, checked without writing or allocating."""
    from volseg.stages.common import check_model

    ft = cfg.finetune
    if ft.n_labeled == 0 and not (ft.use_pseudo and cfg.gan.enabled):
        raise ConfigError(
            "finetune.n_labeled is 0 and no pseudo-masks will be made (finetune.use_pseudo "
            "false or gan.enabled false): nothing to train the network on"
        )
    seg = check_model(cfg)
    if ft.supcon_weight > 0 and (
        getattr(seg, "embedding_channels", None) is None
        or not hasattr(seg, "forward_with_embedding")
    ):
        raise ConfigError(
            f"finetune.supcon_weight: model '{cfg.model.name}' gives no voxel embedding; "
            "set finetune.supcon_weight: 0"
        )


def run_finetune(cfg: Config, resume: bool = True) -> Path:
    """Fine-tune the segmentation network; returns ``<run_dir>/finetune/model.pt``.

    ``resume``: continue an interrupted run from its last checkpoint (a finished run with
    the same settings is a no-op); False starts over.
    """
    from volseg.data.patches import PatchSource, SegPatchDataset
    from volseg.engine import (
        Trainer,
        TrainState,
        barrier,
        build_scheduler,
        init_distributed,
        is_main_process,
        make_loader,
        seed_everything,
    )
    from volseg.losses import FinetuneLoss
    from volseg.models import build_head, build_model

    ft = cfg.finetune
    out = Path(cfg.run_dir) / STAGE
    check_finetune(cfg)
    if resume and _finished(out, cfg):
        log.info("finetune: already finished with these settings (%s)", out / "model.pt")
        return out / "model.pt"
    world = init_distributed()
    main = is_main_process()
    prepared = load_prepared(cfg)  # inputs first: a missing prepare leaves no folder behind
    dl = prepared.datalist

    available = dl.labeled("train")
    labeled = select_labeled(available, ft.n_labeled, cfg.seed)
    pseudo = pseudo_sources(cfg, prepared)
    if not labeled and not pseudo:
        raise InputError(
            "finetune: no training labels: finetune.n_labeled is 0 (or no labeled training "
            "scans) and no QC-passed pseudo-masks (finetune.use_pseudo / gan stage)"
        )
    out = stage_dir(cfg, STAGE)
    if main:  # until this run completes, the folder must not look finished
        (out / SUMMARY_FILE).unlink(missing_ok=True)
        write_json_atomic(
            out / LABELED_FILE,
            {
                "seed": cfg.seed,
                "n_requested": ft.n_labeled,
                "n_available": len(available),
                "ids": [s.id for s in labeled],
                "categories": {s.id: s.category for s in labeled},
            },
        )
    healthy = healthy_sources(cfg, prepared)
    sources = [PatchSource.from_cached(prepared.volumes[s.id], weight=1.0) for s in labeled]
    sources += pseudo + healthy
    val_volumes = prepared.volumes_of(dl.labeled("val"))
    log.info(
        "finetune: %d labeled + %d pseudo-labeled + %d healthy training scans, %d validation scans",
        len(labeled),
        len(pseudo),
        len(healthy),
        len(val_volumes),
    )

    seed_everything(cfg.seed)  # same initial weights on every rank
    seg = build_model(cfg.model.name, **model_kwargs(cfg))
    encoder_file = _init_encoder(cfg, seg)
    proj = None
    if ft.supcon_weight > 0:
        emb = getattr(seg, "embedding_channels", None)
        if emb is None or not hasattr(seg, "forward_with_embedding"):
            raise InputError(
                f"model '{cfg.model.name}' gives no voxel embedding; set finetune.supcon_weight: 0"
            )
        proj = build_head("voxel_projection", in_channels=int(emb), out_dim=PROJECTION_DIM)
    net = FinetuneNet(seg, proj)
    optimizer = _optimizer(net, cfg, pretrained=encoder_file is not None)
    state = TrainState(
        modules={"net": net},
        optimizers={"net": optimizer},
        schedulers={"net": build_scheduler(optimizer, ft)},
        model_args={"net": {"name": cfg.model.name, "params": model_kwargs(cfg)}},
        extra={
            "labeled": [s.id for s in labeled],
            "healthy": [s.id for s in healthy],
            "encoder": encoder_file,
        },
    )
    loss_fn = FinetuneLoss(
        dice_weight=ft.dice_weight,
        bce_weight=ft.bce_weight,
        mse_weight=ft.mse_weight,
        supcon_weight=ft.supcon_weight,
        beta=ft.sensitivity_beta,
        temperature=ft.supcon_temperature,
    )
    counts = (len(labeled), len(pseudo), len(healthy))
    samples_per_step = ft.batch_size * world.world_size
    phases = source_phases(*counts, ft, samples_per_step)
    if phases:
        log.info(
            "finetune: pseudo-labeled crops until step %d, true masks alone after it",
            phases[0][0] // samples_per_step,
        )
    probs = source_probabilities(*counts, ft)
    log.info("finetune: share of crops %s", _crop_shares(counts, probs))
    dataset = SegPatchDataset(
        sources,
        ft.patch_size,
        seed=cfg.seed,
        augment=True,
        source_probs=probs,
        source_phases=phases,
    )

    def step_fn(batch: dict, state: TrainState, ctx: Any) -> dict[str, Any]:
        batch = ctx.to_device(batch)
        with ctx.autocast():
            logits, emb = state.modules["net"](batch["image"])
        label = batch["label"]
        valid = (batch["lungs"] > 0) | (label > 0)
        loss, terms = loss_fn(
            logits.float(),
            label,
            None if emb is None else emb.float(),
            weight=batch["weight"],
            valid_mask=valid,
        )
        norm = ctx.backward_step(loss, state.optimizers["net"])
        return {"loss": loss.detach(), **terms, "grad_norm": norm}

    last_cases: dict[str, dict[str, float]] = {}

    def val_fn(state: TrainState) -> dict[str, float]:
        result = validation.validate_volumes(
            state.raw("net").seg,
            val_volumes,
            cfg.predict.roi_size,
            overlap=cfg.predict.overlap,
            sw_batch_size=cfg.predict.sw_batch_size,
            threshold=0.5,
            restrict_to_lungs=True,
            lung_margin_mm=cfg.predict.lung_margin_mm,
        )
        last_cases.clear()
        last_cases.update(result.cases)
        return result.means("val_")

    if not val_volumes:
        log.warning("no labeled validation scans: the bundle will hold the LAST weights")
    trainer = Trainer(
        state,
        step_fn,
        lambda sampler: make_loader(dataset, sampler, cfg.data.num_workers),
        ft,
        cfg.run_dir,
        STAGE,
        val_fn if val_volumes else None,
        seed=cfg.seed,
        best_metric="val_dice" if val_volumes else None,
        config=cfg.model_dump(mode="json"),
    )
    result = trainer.fit(resume=resume)
    bundle = out / "model.pt"
    if main:
        checkpoint = result.best or result.last
        summary = {
            "best_val_dice": result.best_metric,
            "best_epoch": result.best_epoch,
            "checkpoint": checkpoint.name,
            "last_val": result.last_val,
            "last_val_cases": last_cases,
            "steps": result.global_step,
            "init": "pretrained" if encoder_file else "scratch",
            "encoder": encoder_file,
            "labeled_ids": [s.id for s in labeled],
            "n_pseudo": len(pseudo),
            "pseudo_ids": [s.id for s in pseudo],
            "healthy_ids": [s.id for s in healthy],
            "val_ids": [v.id for v in val_volumes],
            "config_hash": _config_hash(cfg),
        }
        device = next(state.raw("net").parameters()).device
        model = _model_from_checkpoint(cfg, checkpoint).to(device)
        gate = _calibrate_gate(cfg, model, prepared) if ft.calibrate_gate else None
        if gate is not None:
            summary["gate"] = gate
        extra = {k: summary[k] for k in ("best_val_dice", "best_epoch", "init", "n_pseudo")}
        bundle = _save_bundle(
            cfg, model, out, extra, None if gate is None else gate["min_involvement_pct"]
        )
        write_json_atomic(out / SUMMARY_FILE, _json_safe(summary))
        log.info(
            "finetune: best val_dice %s at epoch %s -> %s",
            "n/a" if result.best_metric is None else f"{result.best_metric:.4f}",
            result.best_epoch,
            bundle,
        )
    barrier()  # every rank returns once the bundle exists
    return bundle
