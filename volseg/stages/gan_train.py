"""Training the healthy-lung GAN (after Shabani et al., Comput Biol Med 2022).

The generator learns to restore healthy lung: healthy (CT-0) training crops are corrupted
with lesions from the project's one lesion model (:class:`CropPainter`) and ``G`` must give
back the clean crop (restoration L1, heavier on the corrupted voxels). A 3D PatchGAN discriminator
sees clean healthy crops as real and every generator output as fake: the restored healthy
crops and ``G`` applied to unlabeled COVID crops of the training split, so ``G`` also learns
to make real COVID lungs look healthy. Both optimizers step through the engine's
``ctx.backward_step``; checkpoints, resume and logs are the engine's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from volseg.config import Config
from volseg.data.cache import CachedVolume
from volseg.data.patches import UnlabeledPatchDataset
from volseg.engine import (
    FitResult,
    StepContext,
    StepDataset,
    Trainer,
    TrainState,
    build_scheduler,
    derive_seed,
    load_model_weights,
    make_loader,
    seed_everything,
    select_device,
)
from volseg.errors import ConfigError, InputError
from volseg.losses import AdversarialLoss, RestorationL1Loss
from volseg.models import build_gan_model
from volseg.stages.common import Prepared
from volseg.utils import eval_mode

log = logging.getLogger(__name__)

STAGE = "gan"
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
GENERATOR_NAME = "generator3d"
DISCRIMINATOR_NAME = "patch_discriminator3d"
RESTORE_METRIC = "val_restore"
DICE_METRIC = "val_pseudo_dice"
ADAM_BETAS = (0.5, 0.999)


@dataclass(frozen=True)
class CropPainter:
    """Paints COVID-19-like lesions into healthy GAN crops on the [0, 1] HU window: the
    project's one lesion model (:func:`volseg.data.paint.paint_patch`), on the working
    grid's spacing, one of ``categories`` drawn per crop."""

    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    categories: tuple[str, ...]

    def __call__(
        self, clean: torch.Tensor, lungs: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``clean`` and ``lungs`` ``(1, X, Y, Z)`` -> ``(corrupted, weight)``, weight > 0
        exactly where the crop was painted (never outside its lungs)."""
        from volseg.data.paint import paint_patch

        lo, hi = self.hu_window
        category = self.categories[int(rng.integers(len(self.categories)))]
        hu = lo + clean[0].numpy().astype(np.float32) * (hi - lo)
        painted, weight = paint_patch(hu, lungs[0].numpy() > 0, self.spacing, category, rng)
        corrupted = np.clip((painted - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        corrupted = np.where(weight > 0, corrupted, clean[0].numpy())
        return torch.from_numpy(corrupted[None]), torch.from_numpy(weight[None])


def make_painter(cfg: Config) -> CropPainter:
    """The GAN's lesion painter from ``data.spacing``, ``data.hu_window`` and
    ``gan.paint_categories``."""
    return CropPainter(
        spacing=tuple(float(s) for s in cfg.data.spacing),
        hu_window=tuple(float(v) for v in cfg.data.hu_window),
        categories=tuple(cfg.gan.paint_categories),
    )


def build_networks(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator from ``gan.generator_params`` / ``gan.discriminator_params``."""
    nets = []
    for key, name in (
        ("generator_params", GENERATOR_NAME),
        ("discriminator_params", DISCRIMINATOR_NAME),
    ):
        try:
            nets.append(build_gan_model(name, **getattr(cfg.gan, key)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"gan.{key}: {exc}") from None
    return nets[0], nets[1]


class GanPatchDataset(StepDataset):
    """Step-indexed GAN samples: a corrupted healthy crop with its clean target, plus a COVID crop.

    Each sample has ``clean``, ``corrupted``, ``blob`` (corruption weight) and ``lungs``
    ``(1, X, Y, Z)`` from a healthy volume, and ``covid`` ``(1, X, Y, Z)`` from an unlabeled
    COVID volume when any are given. Crops are centred inside the lungs; all randomness
    (volume, centre, lesions) comes from the per-index generator.
    """

    def __init__(
        self,
        healthy: Sequence[CachedVolume],
        covid: Sequence[CachedVolume],
        patch_size: Sequence[int],
        painter: CropPainter,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.healthy = UnlabeledPatchDataset(healthy, patch_size, seed)
        self.covid = UnlabeledPatchDataset(covid, patch_size, seed) if covid else None
        self.painter = painter

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        crop = self.healthy.sample(index, rng)
        clean, lungs = crop["image"], crop["lungs"]
        corrupted, blob = self.painter(clean, lungs, rng)
        out = {"clean": clean, "corrupted": corrupted, "blob": blob, "lungs": lungs}
        if self.covid is not None:
            out["covid"] = self.covid.sample(index, rng)["image"]
        return out


class GanSteps:
    """``step_fn`` and ``val_fn`` of the GAN stage (losses built once from the config).

    With ``dice_volumes`` (labeled validation scans) each validation also scores the
    pseudo-masks the generator would make on them: ``val_pseudo_dice``, the mean Dice at the
    threshold calibrated on those scans, as the pseudo-mask stage will calibrate it.
    """

    def __init__(
        self,
        cfg: Config,
        val_batch: dict[str, torch.Tensor] | None,
        dice_volumes: Sequence[CachedVolume] = (),
    ) -> None:
        self.cfg = cfg
        self.gan = cfg.gan
        self.adversarial = AdversarialLoss(cfg.gan.adversarial)
        self.l1 = RestorationL1Loss()
        self.val_batch = val_batch
        self.dice_volumes = list(dice_volumes)

    def l1_weight_map(self, blob: torch.Tensor) -> torch.Tensor:
        """1 everywhere, ``1 + lesion_l1_weight`` where lesions were painted."""
        return 1.0 + self.gan.lesion_l1_weight * (blob > 0).to(blob.dtype)

    def step(
        self, batch: dict[str, torch.Tensor], state: TrainState, ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        b = ctx.to_device(batch)
        gen, disc = state.modules[GENERATOR], state.modules[DISCRIMINATOR]
        opt_g, opt_d = state.optimizers[GENERATOR], state.optimizers[DISCRIMINATOR]
        n = b["clean"].shape[0]
        inputs = torch.cat([b["corrupted"], b["covid"]]) if "covid" in b else b["corrupted"]

        # Discriminator: clean healthy crops are real, every generator output is fake.
        with ctx.autocast():
            fake = gen(inputs)
            logits = disc(torch.cat([b["clean"], fake.detach()]))
            loss_d = self.adversarial.discriminator_loss(logits[:n], logits[n:])
        opt_d.zero_grad(set_to_none=True)  # drop gradients the last generator step left in D
        ctx.backward_step(loss_d, opt_d)

        # Generator: restore the corrupted healthy crops and fool the discriminator on all.
        with ctx.autocast():
            l1 = self.l1(fake[:n], b["clean"], self.l1_weight_map(b["blob"]))
            adv = self.adversarial.generator_loss(disc(fake))
            loss_g = self.gan.l1_weight * l1 + self.gan.adv_weight * adv
        ctx.backward_step(loss_g, opt_g)
        opt_d.zero_grad(set_to_none=True)
        return {
            "loss_g": loss_g.detach(),
            "loss_d": loss_d.detach(),
            "l1": l1.detach(),
            "adv_g": adv.detach(),
        }

    def validate(self, state: TrainState) -> dict[str, float]:
        """Restoration error of corrupted healthy validation crops (lower is better)."""
        if self.val_batch is None:
            return {}
        gen = state.raw(GENERATOR)
        device = next(gen.parameters()).device
        b = {k: v.to(device) for k, v in self.val_batch.items()}
        with eval_mode(gen), torch.no_grad():
            restored = gen(b["corrupted"])
        lungs = b["lungs"] > 0
        painted = b["blob"] > 0
        metrics = {
            RESTORE_METRIC: float(self.l1(restored, b["clean"], lungs)),
            "val_l1_lesion": float(self.l1(restored, b["clean"], painted & lungs)),
            "val_l1_healthy": float(self.l1(restored, b["clean"], lungs & ~painted)),
            "val_l1_identity": float(self.l1(b["corrupted"], b["clean"], lungs)),
        }
        if self.dice_volumes:
            metrics[DICE_METRIC] = self.pseudo_dice(gen, device)
        return metrics

    def pseudo_dice(self, gen: nn.Module, device: torch.device) -> float:
        """Mean Dice of the generator's pseudo-masks on the labeled validation scans, at the
        threshold calibrated on them (:func:`volseg.pseudo.threshold.calibrate_threshold`),
        or at ``gan.threshold`` when that is set."""
        from volseg.pseudo.threshold import calibrate_threshold
        from volseg.stages.gan import ResidualMaker

        residual_of = ResidualMaker(self.cfg, gen, device)
        vols = self.dice_volumes
        residuals = [residual_of(v) for v in vols]
        masks = [np.asarray(v.label()) > 0 for v in vols]
        spacings = [v.spacing for v in vols]
        fixed = None if self.gan.threshold is None else [self.gan.threshold]
        cal = calibrate_threshold(residuals, masks, spacings, self.gan.min_component_mm3, fixed)
        return cal.score


def _volumes(prepared: Prepared, studies: Sequence[Any]) -> list[CachedVolume]:
    return prepared.volumes_of(list(studies))


def training_volumes(prepared: Prepared) -> tuple[list[CachedVolume], list[CachedVolume]]:
    """Healthy and unlabeled COVID volumes of the TRAIN split (InputError without healthy)."""
    dl = prepared.datalist
    healthy = _volumes(prepared, dl.healthy("train"))
    covid = _volumes(prepared, dl.covid_unlabeled("train"))
    if not healthy:
        raise InputError(
            f"{dl.root}: the training split has no healthy (CT-0) scans to train the GAN on; "
            "set gan.enabled: false"
        )
    if any(v.lungs() is None for v in healthy + covid):
        raise InputError("the GAN needs lung masks in the cache; re-run 'volseg prepare'")
    return healthy, covid


def selection_volumes(cfg: Config, prepared: Prepared) -> list[CachedVolume]:
    """The labeled validation scans that choose the checkpoint by pseudo-mask Dice (none
    with ``gan.select_by: restore``)."""
    if cfg.gan.select_by != "pseudo_dice":
        return []
    vols = _volumes(prepared, prepared.datalist.labeled("val"))
    return [v for v in vols if v.has_label and v.has_lungs]


def validation_batch(
    cfg: Config, prepared: Prepared, painter: CropPainter
) -> dict[str, torch.Tensor]:
    """A fixed batch of corrupted healthy crops: validation scans, else training scans."""
    dl = prepared.datalist
    volumes = _volumes(prepared, dl.healthy("val")) or _volumes(prepared, dl.healthy("train"))
    data = GanPatchDataset(
        volumes, [], cfg.gan.patch_size, painter, seed=derive_seed(cfg.seed, 0x6A4)
    )
    return default_collate([data[i] for i in range(cfg.gan.val_crops)])


def train_gan(cfg: Config, prepared: Prepared, resume: bool = True) -> FitResult:
    """Train (or resume, or skip when finished) the GAN; checkpoints in ``<run_dir>/gan``."""
    healthy, covid = training_volumes(prepared)
    log.info("gan: training on %d healthy and %d unlabeled COVID scans", len(healthy), len(covid))
    if not covid:
        log.warning("gan: no unlabeled COVID training scans; the discriminator sees only healthy")
    painter = make_painter(cfg)
    seed_everything(cfg.seed)  # the same initial weights on every rank and every fresh run
    gen, disc = build_networks(cfg)
    opts = {
        name: torch.optim.Adam(
            net.parameters(), lr=cfg.gan.lr, betas=ADAM_BETAS, weight_decay=cfg.gan.weight_decay
        )
        for name, net in ((GENERATOR, gen), (DISCRIMINATOR, disc))
    }
    state = TrainState(
        modules={GENERATOR: gen, DISCRIMINATOR: disc},
        optimizers=opts,
        schedulers={name: build_scheduler(opt, cfg.gan) for name, opt in opts.items()},
        model_args={GENERATOR: dict(gen.init_args), DISCRIMINATOR: dict(disc.init_args)},
    )
    dice_volumes = selection_volumes(cfg, prepared)
    steps = GanSteps(cfg, validation_batch(cfg, prepared, painter), dice_volumes)
    best, mode = (DICE_METRIC, "max") if dice_volumes else (RESTORE_METRIC, "min")
    log.info("gan: the checkpoint with the best %s makes the pseudo-masks", best)
    data = GanPatchDataset(healthy, covid, cfg.gan.patch_size, painter, seed=cfg.seed)
    trainer = Trainer(
        state,
        steps.step,
        lambda sampler: make_loader(data, sampler, cfg.data.num_workers),
        cfg.gan,
        cfg.run_dir,
        STAGE,
        steps.validate,
        seed=cfg.seed,
        best_metric=best,
        best_mode=mode,
        plateau_metric=RESTORE_METRIC,
        config=cfg.model_dump(mode="json"),
    )
    return trainer.fit(resume=resume)


def load_generator(path: str | Path, device: torch.device | None = None) -> nn.Module:
    """The generator of a GAN checkpoint, rebuilt from its stored arguments, in eval mode."""
    state_dict, kwargs = load_model_weights(path, GENERATOR)
    gen = build_gan_model(GENERATOR_NAME, **kwargs)
    gen.load_state_dict(state_dict)
    return gen.to(device or select_device()).eval()
