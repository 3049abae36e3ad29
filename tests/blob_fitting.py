"""Shared by the few-step learning tests: one synthetic blob volume and an Adam loop fitting it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812


def blob_volume(
    size: Sequence[int],
    centre: Sequence[float],
    radii: Sequence[float],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, label)`` of shape ``(1, 1, *size)``: a bright ellipsoid on a noisy background."""
    d, h, w = (torch.arange(n, dtype=torch.float32) for n in size)
    dist = (
        ((d[:, None, None] - centre[0]) / radii[0]) ** 2
        + ((h[None, :, None] - centre[1]) / radii[1]) ** 2
        + ((w[None, None, :] - centre[2]) / radii[2]) ** 2
    )
    label = (dist <= 1).float()[None, None]
    image = 0.1 + 0.05 * torch.rand(1, 1, *size, generator=generator) + 0.4 * label
    return image, label


def dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    return float(2 * (pred * ref).sum() / (pred.sum() + ref.sum()))


def fit_blob(
    model: torch.nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    lr: float,
    steps: int = 80,
    stop_at: float = 0.93,
) -> float:
    """Adam on BCE + soft Dice until Dice reaches ``stop_at``; returns the final model's Dice."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        logits = model(image)
        prob = torch.sigmoid(logits)
        soft_dice = (2 * (prob * label).sum() + 1) / (prob.sum() + label.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, label) + 1 - soft_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dice((logits.detach() > 0).float(), label) > stop_at:
            break
    with torch.no_grad():
        return dice((model(image) > 0).float(), label)
