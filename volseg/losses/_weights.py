"""Shared helpers for weighted, reduced voxel losses (weights broadcast, one reduction rule)."""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_reduction(reduction: str) -> Reduction:
    """Return ``reduction`` if it is one of ``mean``/``sum``/``none``, else raise ValueError."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction  # type: ignore[return-value]


def expand_weight(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Broadcast per-sample ``(B,)`` or per-voxel weights to the shape of ``like`` ``(B, C, ...)``.

    A 1-D weight of length B is one weight per volume (e.g. 0.5 for a pseudo-mask); any other
    shape must broadcast to ``like`` (typically ``(B, 1, D, H, W)``). Negative weights are
    rejected because they would turn a loss into a reward.
    """
    if weight is None:
        return None
    if weight.ndim == 1 and like.ndim > 1 and weight.shape[0] == like.shape[0]:
        weight = weight.reshape((-1,) + (1,) * (like.ndim - 1))
    try:
        weight = torch.broadcast_to(weight, like.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not broadcast to {tuple(like.shape)}"
        ) from exc
    if bool((weight < 0).any()):
        raise ValueError("weight must be non-negative")
    return weight.to(like.dtype)


def reduce_weighted(
    values: torch.Tensor, weight: torch.Tensor | None, reduction: Reduction
) -> torch.Tensor:
    """Multiply per-element ``values`` by ``weight`` and reduce.

    ``mean`` is ``sum(w * l) / numel`` (not ``/ sum(w)``): a weight of 0.5 on every voxel halves
    the loss, so down-weighted pseudo-labels really count less, and an all-zero weight gives 0.
    """
    if weight is not None:
        values = values * weight
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32 (float64 stays float64) for numerically safe losses."""
    if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
        return x.float()
    return x


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ValueError naming both tensors when their shapes differ."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} shape {tuple(a.shape)} differs from {name_b} shape {tuple(b.shape)}"
        )
