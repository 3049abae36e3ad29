"""GAN losses for the healthy-lung restoration model: adversarial (LSGAN/hinge) and masked L1."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from volseg.losses._weights import at_least_float32, check_reduction, check_same_shape

AdversarialKind = Literal["lsgan", "hinge"]
ADVERSARIAL_KINDS: tuple[str, ...] = ("lsgan", "hinge")


class AdversarialLoss(nn.Module):
    """Adversarial losses on raw discriminator outputs (logits or patch maps of any shape).

    ``lsgan`` (Mao et al., ICCV 2017), real target 1, fake target 0::

        L_D = ½ E[(D(x) − 1)²] + ½ E[D(G(z))²]      L_G = ½ E[(D(G(z)) − 1)²]

    ``hinge`` (Lim & Ye 2017; Miyato et al. 2018)::

        L_D = E[relu(1 − D(x))] + E[relu(1 + D(G(z)))]      L_G = −E[D(G(z))]

    Use :meth:`discriminator_loss` (pass ``fake_logits`` from a detached generator output)
    and :meth:`generator_loss`; calling the module is the generator loss. Computed in at
    least float32.

    Args:
        kind: ``"lsgan"`` or ``"hinge"``.
    """

    def __init__(self, kind: str = "lsgan") -> None:
        super().__init__()
        if kind not in ADVERSARIAL_KINDS:
            raise ValueError(f"kind must be one of {ADVERSARIAL_KINDS}, got {kind!r}")
        self.kind: AdversarialKind = kind  # type: ignore[assignment]

    def discriminator_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> torch.Tensor:
        """Discriminator loss: push real outputs up and fake outputs down."""
        real, fake = at_least_float32(real_logits), at_least_float32(fake_logits)
        if self.kind == "lsgan":
            return 0.5 * (real - 1.0).pow(2).mean() + 0.5 * fake.pow(2).mean()
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()

    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Generator loss: make the discriminator call the fakes real."""
        fake = at_least_float32(fake_logits)
        if self.kind == "lsgan":
            return 0.5 * (fake - 1.0).pow(2).mean()
        return -fake.mean()

    def forward(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`generator_loss`."""
        return self.generator_loss(fake_logits)


class RestorationL1Loss(nn.Module):
    """Mean absolute error between restored and target volumes, optionally inside a mask::

        L = Σ m·|x̂ − x| / Σ m      (over all voxels and channels; m = 1 without a mask)

    A mask ``(B, 1, *spatial)`` (e.g. the lungs) is broadcast over channels; an empty mask
    gives an exact 0 with gradient. ``reduction="none"`` returns ``m·|x̂ − x|``.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss for ``prediction`` and ``target`` ``(B, C, *spatial)``."""
        check_same_shape("prediction", prediction, "target", target)
        pred = at_least_float32(prediction)
        diff = (pred - target.to(pred.dtype)).abs()
        if mask is None:
            m = torch.ones_like(diff)
        else:
            try:
                m = torch.broadcast_to(mask.to(diff.dtype), diff.shape)
            except RuntimeError as exc:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not broadcast to {tuple(diff.shape)}"
                ) from exc
        masked = diff * m
        if self.reduction == "none":
            return masked
        if self.reduction == "sum":
            return masked.sum()
        return masked.sum() / m.sum().clamp_min(1e-12)
