"""Losses on predicted probabilities: squared error and soft Dice, both optionally weighted."""

from __future__ import annotations

import torch
from torch import nn

from volseg.losses._weights import (
    at_least_float32,
    check_reduction,
    check_same_shape,
    expand_weight,
    reduce_weighted,
)


class ProbabilityMSELoss(nn.Module):
    """Mean squared error between ``sigmoid(logits)`` and the (possibly soft) target.

    Per voxel ``l = (sigmoid(logit) − y)²``; bounded in [0, 1], so it is a gentle, outlier-robust
    companion to BCE. Weighting and reduction follow :class:`SensitivityBCELoss`:
    ``mean`` = ``Σ w·l / numel``.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss for ``logits`` and ``target`` of the same shape, e.g. ``(B, 1, D, H, W)``."""
        check_same_shape("logits", logits, "target", target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = at_least_float32(logits)
            per_voxel = (torch.sigmoid(logits) - target.to(logits.dtype)).pow(2)
            return reduce_weighted(per_voxel, expand_weight(weight, per_voxel), self.reduction)


class SoftDiceLoss(nn.Module):
    """Soft Dice loss per volume (MONAI ``DiceLoss(sigmoid=True)``), with per-volume weights.

    For volume b and channel c, with ``p = sigmoid(logit)``::

        d_bc = 1 − (2 Σ p·y + s) / (Σ p + Σ y + s),     s = smooth (1e-5, MONAI's default)

    ``mean`` reduction is ``Σ_b w_b · mean_c d_bc / B``. A voxel-level ``weight``
    ``(B, 1, *spatial)`` is reduced to its per-volume mean ``w_b`` (pseudo-label volumes carry
    a constant weight, so this is exact for them); ``(B,)`` is used as is. An all-background
    target gives ``d ≈ 1`` unless the prediction is also empty, which is finite.

    Args:
        smooth: s > 0 added to numerator and denominator.
        reduction: ``"mean"``, ``"sum"`` (over volumes) or ``"none"`` (``(B,)``).
    """

    def __init__(self, smooth: float = 1e-5, reduction: str = "mean") -> None:
        super().__init__()
        if not smooth > 0:
            raise ValueError(f"smooth must be > 0, got {smooth}")
        from monai.losses import DiceLoss

        self.reduction = check_reduction(reduction)
        self.dice = DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, reduction="none")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss for ``logits`` and ``target`` ``(B, C, *spatial)``."""
        check_same_shape("logits", logits, "target", target)
        if logits.ndim < 3:
            raise ValueError(f"logits must have shape (B, C, *spatial), got {tuple(logits.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = at_least_float32(logits)
            per_volume = self.dice(logits, target.to(logits.dtype)).flatten(1).mean(dim=1)
            w = None
            if weight is not None:
                if weight.ndim > 1:
                    weight = expand_weight(weight, logits[:, :1]).flatten(1).mean(dim=1)
                w = expand_weight(weight, per_volume)
            return reduce_weighted(per_volume, w, self.reduction)
