"""Sensitivity-enhanced binary cross-entropy: missed lesion voxels cost more than false alarms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from volseg.losses._weights import (
    at_least_float32,
    check_reduction,
    check_same_shape,
    expand_weight,
    reduce_weighted,
)


class SensitivityBCELoss(nn.Module):
    """BCE scaled up on under-confident lesion voxels.

    Per voxel, with ``p = sigmoid(logit)`` and target ``y ∈ [0, 1]`` (soft targets allowed)::

        l = BCE(p, y) · (1 + β · (1 − p) · y)

    so a lesion voxel predicted as background (false negative) costs up to ``1 + β`` times as
    much as an equally confident false positive. The factor is part of the graph (not
    detached); for ``y = 1`` the loss stays strictly decreasing in ``p``. BCE uses
    ``binary_cross_entropy_with_logits`` for stability.

    Reduction with optional non-negative ``weight`` (per-voxel, broadcastable, or ``(B,)`` per
    volume): ``mean`` = ``Σ w·l / numel`` (so weight 0.5 everywhere halves the loss and a
    pseudo-label really counts less), ``sum`` = ``Σ w·l``, ``none`` = ``w·l`` per voxel. With
    ``weight=None`` ``mean`` is the plain mean.

    Args:
        beta: β ≥ 0; 0 gives plain BCE.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, beta: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.reduction = check_reduction(reduction)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss for ``logits`` and ``target`` of the same shape, e.g. ``(B, 1, D, H, W)``."""
        check_same_shape("logits", logits, "target", target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = at_least_float32(logits)
            target = target.to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            p = torch.sigmoid(logits)
            per_voxel = bce * (1.0 + self.beta * (1.0 - p) * target)
            return reduce_weighted(per_voxel, expand_weight(weight, per_voxel), self.reduction)
