"""The combined fine-tuning loss: Dice + sensitivity BCE + probability MSE + voxel SupCon."""

from __future__ import annotations

import torch
from torch import nn

from volseg.losses.contrastive import SupConVoxelLoss
from volseg.losses.probability import ProbabilityMSELoss, SoftDiceLoss
from volseg.losses.sensitivity import SensitivityBCELoss


class FinetuneLoss(nn.Module):
    """Weighted sum of the fine-tuning terms::

        L = w_dice·Dice + w_bce·SensitivityBCE(β) + w_mse·MSE(sigmoid) + w_supcon·SupCon(τ)

    ``forward(logits, target, embeddings=None, weight=None, valid_mask=None)`` returns
    ``(total, terms)`` where ``terms`` maps each computed term name (``dice``, ``bce``,
    ``mse``, ``supcon``) to its *unweighted*, detached 0-d tensor for logging (no device sync per step), so
    ``total == Σ weight_k · terms[k]``. Terms with weight 0 are not computed; SupCon is also
    skipped when ``embeddings`` is None. ``weight`` (per-voxel ``(B, 1, *spatial)`` or per-volume
    ``(B,)``) lets pseudo-labels count less in every term (see each term for how).

    Args:
        dice_weight, bce_weight, mse_weight, supcon_weight: non-negative term weights.
        beta: sensitivity factor β of :class:`SensitivityBCELoss`.
        temperature: SupCon temperature τ.
        max_per_class, hard_fraction: SupCon voxel sampling (see :class:`SupConVoxelLoss`).
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        mse_weight: float = 0.5,
        supcon_weight: float = 0.1,
        beta: float = 2.0,
        temperature: float = 0.1,
        max_per_class: int = 256,
        hard_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        weights = {
            "dice": dice_weight,
            "bce": bce_weight,
            "mse": mse_weight,
            "supcon": supcon_weight,
        }
        for name, value in weights.items():
            if not value >= 0:
                raise ValueError(f"{name}_weight must be >= 0, got {value}")
        if not any(value > 0 for value in weights.values()):
            raise ValueError("at least one of the FinetuneLoss term weights must be > 0")
        self.weights = {name: float(value) for name, value in weights.items()}
        self.dice = SoftDiceLoss()
        self.bce = SensitivityBCELoss(beta=beta)
        self.mse = ProbabilityMSELoss()
        self.supcon = SupConVoxelLoss(
            temperature=temperature, max_per_class=max_per_class, hard_fraction=hard_fraction
        )

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        embeddings: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        valid_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and per-term values for ``logits``/``target`` ``(B, 1, D, H, W)``.

        ``embeddings`` ``(B, E, d, h, w)`` may be on a coarser grid than ``target``; the
        labels are then resampled to it by nearest neighbour. ``valid_mask`` and
        ``generator`` only affect SupCon sampling.
        """
        values: dict[str, torch.Tensor] = {}
        if self.weights["dice"] > 0:
            values["dice"] = self.dice(logits, target, weight)
        if self.weights["bce"] > 0:
            values["bce"] = self.bce(logits, target, weight)
        if self.weights["mse"] > 0:
            values["mse"] = self.mse(logits, target, weight)
        if self.weights["supcon"] > 0 and embeddings is not None:
            voxel_weight = weight
            if weight is not None and weight.ndim == 1:
                voxel_weight = weight.reshape((-1,) + (1,) * (target.ndim - 1))
                voxel_weight = voxel_weight.expand(-1, 1, *target.shape[2:])
            values["supcon"] = self.supcon(
                embeddings, target, voxel_weight, valid_mask, generator=generator
            )
        if not values:
            raise ValueError("FinetuneLoss computed no term: supcon-only loss needs embeddings")
        parts = [self.weights[name] * value for name, value in values.items()]
        total = torch.stack(parts).sum()
        terms = {name: value.detach() for name, value in values.items()}
        return total, terms
