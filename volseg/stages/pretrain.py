"""The pretrain stage: Barlow Twins on the segmentation network's encoder, no labels.

After Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
(ICML 2021). Every train-split scan (labeled, unlabeled and healthy; labels never read)
gives lung-centred crops; each crop is augmented twice (random scale/shift/rotation, flips,
intensity scale/shift/gamma, blur, noise); the encoder of ``build_model(cfg.model.name,
**model_kwargs(cfg))`` and a projector map both views to embeddings whose cross-correlation
the loss pushes towards the identity. Training runs through :class:`volseg.engine.Trainer`
(checkpoints, exact resume, ``metrics.jsonl``, DDP with the correlation over the global
batch).

Writes, under ``<run_dir>/pretrain/``::

    encoder.pt     {"format": "volseg-encoder", "model": {"name", "params"}, "state_dict"}
                   (``model.encoder.state_dict()``; fine-tuning loads it with strict=True)
    probe.json     linear-probe AUC / balanced accuracy, pretrained vs random encoder
    checkpoint_last.pt, metrics.jsonl, tb/   (the engine's)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg.config import Config
from volseg.data.patches import UnlabeledPatchDataset
from volseg.errors import ConfigError, InputError
from volseg.models.finetune_net import ENCODER_FORMAT, read_encoder  # noqa: F401
from volseg.rundir import ENCODER_FILE

log = logging.getLogger(__name__)

STAGE = "pretrain"
PROBE_FILE = "probe.json"


# ----------------------------------------------------------------------------- data


def barlow_augment(
    patch_size: Sequence[int],
    *,
    affine_prob: float = 0.8,
    rotate_deg: tuple[float, float, float] = (5.0, 5.0, 15.0),
    scale: tuple[float, float, float] = (0.2, 0.2, 0.1),
    shift_fraction: float = 0.125,
    intensity_prob: float = 0.8,
    gamma_prob: float = 0.3,
    blur_prob: float = 0.3,
    noise_prob: float = 0.5,
    noise_std: float = 0.03,
):
    """Strong two-view augmentation for Barlow Twins on ``{"image": (1, X, Y, Z)}`` in [0, 1].

    Random scale and shift of the crop (a 3D "random resized crop"), small rotations (more
    about the slice axis than about the in-plane ones), flips on every axis, intensity
    scale/shift, gamma, Gaussian blur and Gaussian noise. Shapes are kept.
    """
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    key = "image"
    shift = tuple(float(p) * shift_fraction for p in patch_size)
    return Compose(
        [
            RandAffined(
                keys=key,
                prob=affine_prob,
                rotate_range=tuple(float(np.deg2rad(d)) for d in rotate_deg),
                scale_range=tuple(scale),
                translate_range=shift,
                mode="bilinear",
                padding_mode="zeros",
            ),
            *(RandFlipd(keys=key, prob=0.5, spatial_axis=a) for a in range(3)),
            RandScaleIntensityd(keys=key, factors=0.2, prob=intensity_prob),
            RandShiftIntensityd(keys=key, offsets=0.1, prob=intensity_prob),
            RandAdjustContrastd(keys=key, gamma=(0.7, 1.5), prob=gamma_prob),
            RandGaussianSmoothd(
                keys=key,
                sigma_x=(0.25, 1.0),
                sigma_y=(0.25, 1.0),
                sigma_z=(0.1, 0.5),
                prob=blur_prob,
            ),
            RandGaussianNoised(keys=key, prob=noise_prob, mean=0.0, std=noise_std),
        ]
    )


class BarlowViewDataset(UnlabeledPatchDataset):
    """Lung-centred crops with two views each (``views`` ``(2, 1, X, Y, Z)``), seeded per index.

    :class:`UnlabeledPatchDataset` with ``views=2`` and :func:`barlow_augment` as the view
    transform; no label is ever read.
    """

    def __init__(
        self,
        volumes: Sequence[Any],
        patch_size: Sequence[int],
        seed: int = 0,
        augment_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(volumes, patch_size, seed, lung_fraction=1.0, views=2)
        self.transform = barlow_augment(self.patch_size, **(augment_kwargs or {}))


# ----------------------------------------------------------------------------- network


class BarlowTwinsNet(nn.Module):
    """Encoder + projector: two views ``(B, 1, D, H, W)`` -> embeddings ``(B, P)`` each.

    Both views go through the encoder in one batch (its norms are per instance); the
    projector, whose BatchNorm needs ``B >= 2``, sees each view's batch separately as in the
    paper. The encoder's bottleneck is average-pooled by the projector.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, bottleneck = self.encoder(torch.cat([view1, view2]))
        h1, h2 = bottleneck.chunk(2)
        return self.projector(h1), self.projector(h2)


def build_network(cfg: Config) -> nn.Module:
    """The full segmentation network of ``cfg.model``, seeded with ``cfg.seed``.

    Seeding first makes the random encoder of the probe's baseline identical to the one
    pretraining starts from.
    """
    from volseg.engine import seed_everything
    from volseg.models import build_model
    from volseg.stages.common import model_kwargs

    seed_everything(cfg.seed)
    try:
        return build_model(cfg.model.name, **model_kwargs(cfg))
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc


def build_barlow_net(cfg: Config) -> tuple[BarlowTwinsNet, nn.Module]:
    """``(BarlowTwinsNet, full network)``: the net shares the full network's encoder."""
    from volseg.models import ProjectorHead

    network = build_network(cfg)
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "out_channels"):
        raise ConfigError(f"model.name '{cfg.model.name}' has no encoder to pretrain")
    projector = ProjectorHead(encoder.out_channels, dims=cfg.pretrain.projector_dims)
    return BarlowTwinsNet(encoder, projector), network


# ----------------------------------------------------------------------------- encoder file


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, so stored and current settings compare equal."""
    return json.loads(json.dumps(obj, default=str))


def encoder_record(cfg: Config) -> dict[str, Any]:
    """The ``model`` entry of ``encoder.pt``: the network the encoder belongs to."""
    from volseg.stages.common import model_kwargs

    return {"name": cfg.model.name, "params": _plain(model_kwargs(cfg))}


def save_encoder(path: Path, encoder: nn.Module, cfg: Config) -> Path:
    """Write ``encoder.pt`` atomically (the contract fine-tuning reads)."""
    from volseg.io import atomic_path

    payload = {
        "format": ENCODER_FORMAT,
        "model": encoder_record(cfg),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "pretrain": _plain(cfg.pretrain.model_dump(mode="json")),
        "seed": cfg.seed,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


# ----------------------------------------------------------------------------- probe


def run_probe(
    cfg: Config, pretrained: nn.Module, prepared: Any, device: torch.device
) -> dict[str, Any]:
    """Linear probe of the pretrained vs a random (same-seed) encoder vs raw intensity.

    Fits on the labeled train scans, scores on the labeled val scans (or on half of the
    train scans when val has none). Returns the ``probe.json`` record (``{"skipped": why}``
    when there are not enough labeled scans).
    """
    from volseg.stages.probe import (
        encoder_features_at,
        intensity_features_at,
        probe_representations,
        split_probe_volumes,
    )

    datalist = prepared.datalist
    split = split_probe_volumes(
        prepared.volumes_of(datalist.labeled("train")),
        prepared.volumes_of(datalist.labeled("val")),
    )
    if split is None:
        reason = "needs a labeled train scan and a labeled val scan (or two labeled train scans)"
        log.warning("pretrain probe skipped: %s", reason)
        return {"skipped": reason}
    fit_vols, score_vols, how = split
    random_encoder = build_network(cfg).encoder.to(device).eval()
    pretrained = pretrained.to(device).eval()
    fns = {
        "pretrained": lambda img, pts: encoder_features_at(pretrained, img, pts, device),
        "random": lambda img, pts: encoder_features_at(random_encoder, img, pts, device),
        "intensity": intensity_features_at,
    }
    results = probe_representations(
        fit_vols, score_vols, fns, n_per_class=cfg.pretrain.probe_voxels, seed=cfg.seed
    )
    record: dict[str, Any] = {
        "split": how,
        "fit_studies": [v.id for v in fit_vols],
        "score_studies": [v.id for v in score_vols],
        **{name: r.to_json() for name, r in results.items()},
    }
    log.info(
        "pretrain probe (lesion vs lung voxels, %s): AUC pretrained %.3f, random %.3f, "
        "intensity %.3f; balanced accuracy %.3f / %.3f / %.3f",
        how,
        results["pretrained"].auc,
        results["random"].auc,
        results["intensity"].auc,
        results["pretrained"].balanced_accuracy,
        results["random"].balanced_accuracy,
        results["intensity"].balanced_accuracy,
    )
    return record


# ----------------------------------------------------------------------------- stage


def check_pretrain(cfg: Config) -> None:
    """What pretraining needs from the config, checked without writing or allocating."""
    from volseg.stages.common import check_model

    if not cfg.pretrain.enabled:
        return
    if cfg.pretrain.batch_size < 2:
        raise ConfigError("pretrain.batch_size must be at least 2 (BatchNorm in the projector)")
    encoder = getattr(check_model(cfg), "encoder", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "out_channels"):
        raise ConfigError(f"model.name '{cfg.model.name}' has no encoder to pretrain")


def run_pretrain(cfg: Config, resume: bool = True) -> Path:
    """Barlow Twins pretraining; returns ``<run_dir>/pretrain``.

    ``resume``: continue from ``checkpoint_last.pt``; ``False`` starts over, deleting
    earlier outputs. Whether it is up to date is the run manifest's business.
    """
    from volseg.engine import (
        StepContext,
        Trainer,
        TrainState,
        barrier,
        build_scheduler,
        init_distributed,
        make_loader,
        select_device,
    )
    from volseg.io import write_json_atomic
    from volseg.losses import BarlowTwinsLoss
    from volseg.rundir import stage_dir
    from volseg.stages.common import load_prepared

    pcfg = cfg.pretrain
    out = Path(cfg.run_dir) / STAGE
    if not pcfg.enabled:
        log.info("pretrain: disabled (pretrain.enabled: false); nothing to do")
        return out
    check_pretrain(cfg)
    dist = init_distributed()
    prepared = load_prepared(cfg)  # inputs first: a missing prepare leaves no folder behind
    volumes = prepared.volumes_of(prepared.datalist.train_studies())
    if not volumes:
        raise InputError(f"{cfg.run_dir}: no cached train-split scans to pretrain on")
    out = stage_dir(cfg, STAGE)
    if not resume and dist.is_main:
        for name in (ENCODER_FILE, PROBE_FILE):
            (out / name).unlink(missing_ok=True)
    log.info("pretrain: Barlow Twins on %d train-split scans (labels unused)", len(volumes))
    dataset = BarlowViewDataset(volumes, cfg.model.patch_size, seed=cfg.seed)

    device = select_device()
    net, _ = build_barlow_net(cfg)
    optimizer = torch.optim.AdamW(net.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    state = TrainState(
        modules={"net": net},
        optimizers={"net": optimizer},
        schedulers={"net": build_scheduler(optimizer, pcfg)},
        model_args={
            "net": {"model": encoder_record(cfg), "projector_dims": list(pcfg.projector_dims)}
        },
    )
    loss_fn = BarlowTwinsLoss(pcfg.lambda_offdiag)

    def step_fn(batch: dict[str, torch.Tensor], st: TrainState, ctx: StepContext) -> dict:
        views = ctx.to_device(batch["views"])
        with ctx.autocast():
            z1, z2 = st.modules["net"](views[:, 0], views[:, 1])
        loss = loss_fn(z1, z2)
        grad_norm = ctx.backward_step(loss, st.optimizers["net"])
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    trainer = Trainer(
        state,
        step_fn,
        lambda sampler: make_loader(dataset, sampler, cfg.data.num_workers),
        pcfg,
        cfg.run_dir,
        STAGE,
        seed=cfg.seed,
        config=cfg.model_dump(mode="json"),
        device=device,
    )
    result = trainer.fit(resume=resume)
    log.info("pretrain: %d steps run, at step %d", result.ran_steps, result.global_step)

    if dist.is_main:
        encoder = state.raw("net").encoder
        save_encoder(out / ENCODER_FILE, encoder, cfg)
        log.info("pretrain: encoder written to %s", out / ENCODER_FILE)
        if pcfg.probe:
            write_json_atomic(out / PROBE_FILE, run_probe(cfg, encoder, prepared, device))
    barrier()
    return out
