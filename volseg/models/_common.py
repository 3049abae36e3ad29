"""Shared helpers for the networks: argument checks, padding to a stride multiple, norms.

Every segmentation network in volseg accepts inputs of any spatial size: ``pad_to_multiple``
pads the three spatial axes up to a multiple of the network's total stride (with zeros,
i.e. air after the [0, 1] HU scaling) and ``crop_to`` cuts the output back, so the output
size always equals the input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Int3 = tuple[int, int, int]
NORMS = ("instance", "group", "batch")


def as_int3(value: int | Sequence[int], name: str) -> Int3:
    """A positive int or a length-3 sequence of positive ints as a 3-tuple (ValueError names ``name``)."""
    if isinstance(value, int):
        value = (value, value, value)
    items = tuple(value)
    if len(items) != 3 or not all(isinstance(v, int) and v >= 1 for v in items):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return items  # type: ignore[return-value]


def as_strides(strides: Sequence[int | Sequence[int]], name: str = "strides") -> tuple[Int3, ...]:
    """Per-level strides as 3-tuples of 1 or 2 (anisotropic strides allowed)."""
    if len(strides) == 0:
        raise ValueError(f"{name} must list at least one level")
    out = tuple(as_int3(s, f"{name}[{i}]") for i, s in enumerate(strides))
    for i, s in enumerate(out):
        if any(v not in (1, 2) for v in s):
            raise ValueError(f"{name}[{i}] must contain only 1 or 2, got {s}")
    return out


def total_stride(strides: Sequence[Int3]) -> Int3:
    """Product of per-level strides along each axis."""
    return tuple(math.prod(s[a] for s in strides) for a in range(3))  # type: ignore[return-value]


def check_positive_ints(
    values: Sequence[int], name: str, length: int | None = None
) -> tuple[int, ...]:
    """A sequence of positive ints, optionally of a fixed length."""
    items = tuple(values)
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(items)}")
    if not items or not all(isinstance(v, int) and v >= 1 for v in items):
        raise ValueError(f"{name} must be positive ints, got {values!r}")
    return items


def norm_spec(norm: str, channels: Sequence[int], groups: int = 8) -> tuple[str, dict]:
    """MONAI norm spec for ``norm`` in ("instance", "group", "batch"), checked against widths."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "batch":
        return ("batch", {})
    bad = [c for c in channels if c % groups]
    if bad:
        raise ValueError(f"norm='group' uses {groups} groups; widths {bad} are not divisible by it")
    return ("group", {"num_groups": groups})


def pad_to_multiple(x: torch.Tensor, multiple: Int3) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last three axes of ``x`` up to a multiple of ``multiple`` (split evenly).

    Returns the padded tensor and the slices that cut the original region back out.
    """
    spatial = x.shape[-3:]
    pads: list[tuple[int, int]] = []
    region: list[slice] = []
    for size, m in zip(spatial, multiple, strict=True):
        extra = (-size) % m
        before = extra // 2
        pads.append((before, extra - before))
        region.append(slice(before, before + size))
    if not any(p for pair in pads for p in pair):
        return x, tuple(region)
    # F.pad lists pads from the last axis backwards.
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat, mode="constant", value=0.0), tuple(region)


def crop_to(x: torch.Tensor, region: tuple[slice, ...]) -> torch.Tensor:
    """Cut the region returned by :func:`pad_to_multiple` out of a (padded) output."""
    return x[(..., *region)]


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
