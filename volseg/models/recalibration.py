"""Feature recalibration plug-ins for 3D CNN blocks: Squeeze-and-Excitation and SSR.

Both modules map ``(B, C, D, H, W) -> (B, C, D, H, W)`` (same shape and dtype) by multiplying
the features with a gate in (0, 1), so either can follow any encoder or decoder block.
``make_recalibration(kind, channels)`` builds one by the name used in the config
(``model.recalibration``: one of ``RECALIBRATIONS``).

- ``se``: a per-channel gate from the globally pooled features (Hu et al., "Squeeze-and-
  Excitation Networks", CVPR 2018).
- ``ssr``: a per-voxel gate from the local singularity strength (Hölder exponent) of each
  channel's feature map, after the Singularity Strength Recalibration (SSR) module of
  multifractal feature recalibration work for CNNs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from volseg.utils import did_you_mean

RECALIBRATIONS = ("none", "se", "ssr")


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device``; a no-op where autocast does not exist (``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _check_channels(channels: int) -> None:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")


class SqueezeExcitation3D(nn.Module):
    """3D Squeeze-and-Excitation: ``x * sigmoid(W2 relu(W1 mean_xyz(x) + b1) + b2)``.

    After Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018). ``W1`` maps ``C`` to
    ``max(1, C // reduction)`` channels, ``W2`` back to ``C``. ``(B, C, D, H, W)`` in and out;
    the output keeps the input's dtype (also under autocast).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        _check_channels(channels)
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be a positive int, got {reduction!r}")
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(
                f"SqueezeExcitation3D({self.channels}) expects (B, {self.channels}, D, H, W), "
                f"got {tuple(x.shape)}"
            )
        squeezed = x.mean(dim=(2, 3, 4))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))
        return x * gate.to(x.dtype)[:, :, None, None, None]


def _check_radii(radii: Sequence[int]) -> tuple[int, ...]:
    items = tuple(radii)
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in items):
        raise ValueError(f"radii must be positive ints, got {radii!r}")
    if len(set(items)) < 2:
        raise ValueError(f"radii needs at least two distinct values to fit a slope, got {radii!r}")
    return items


def _slope_weights(radii: Sequence[int]) -> list[float]:
    """Least-squares weights ``w_k`` with ``slope = sum_k w_k v_k`` against ``u_k = log(2r+1)``.

    ``w_k = (u_k - mean u) / sum_j (u_j - mean u)^2``; the ``mean v`` term vanishes because the
    ``w_k`` sum to zero.
    """
    u = [math.log(2 * r + 1) for r in radii]
    u_mean = sum(u) / len(u)
    denom = sum((uk - u_mean) ** 2 for uk in u)
    return [(uk - u_mean) / denom for uk in u]


def box_sum3d(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum of ``x`` over the ``(2r+1)^3`` box centred on each voxel, zeros beyond the border.

    Equal to ``avg_pool3d(x, 2r+1, stride=1, padding=r, count_include_pad=True) * (2r+1)^3``,
    computed as three separable 1D box means (3(2r+1) instead of (2r+1)^3 reads per voxel);
    works for boxes larger than the volume.
    ``(B, C, D, H, W)`` in and out.
    """
    k = 2 * radius + 1
    for axis in range(3):
        kernel = [1, 1, 1]
        kernel[axis] = k
        # Pad explicitly: avg_pool3d's own padding refuses kernels longer than the input.
        pads = [0] * 6
        pads[2 * (2 - axis)] = pads[2 * (2 - axis) + 1] = radius  # F.pad lists W, H, D
        x = F.avg_pool3d(F.pad(x, pads), kernel, stride=1)
    return x * float(k**3)


def local_singularity_strength(
    measure_input: torch.Tensor, radii: Sequence[int] = (1, 2, 3, 4), eps: float = 1e-6
) -> torch.Tensor:
    """Local singularity strength ``alpha(x)`` of a non-negative field, per channel.

    With ``mu_r(x)`` the sum of ``measure_input`` over the box of half-width ``r`` (side
    ``s = 2r+1`` voxels) centred on ``x``, ``alpha(x)`` is the least-squares slope of
    ``log(mu_r(x) + eps)`` against ``log s`` over ``radii``: ``mu ~ s^alpha``. It equals the
    local dimension of the measure: 3 inside a smooth positive region, 2 on a sheet, 1 on a
    line, 0 at an isolated point mass; where the whole neighbourhood is zero it is 0.
    Computed in float32 with autocast off (log of box sums is precision-sensitive); voxels
    within ``max(radii)`` of the border see zero padding. ``(B, C, D, H, W)`` -> same shape,
    float32.
    """
    if measure_input.ndim != 5:
        raise ValueError(f"measure_input must be (B, C, D, H, W), got {tuple(measure_input.shape)}")
    radii_t = _check_radii(radii)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    weights = _slope_weights(radii_t)
    with _autocast_off(measure_input.device):
        m = measure_input.float()
        alpha = torch.zeros_like(m)
        for r, w in zip(radii_t, weights, strict=True):
            alpha = alpha + w * torch.log(box_sum3d(m, r) + eps)
    return alpha


class SingularityStrengthRecalibration3D(nn.Module):
    """Singularity Strength Recalibration (SSR) for 3D features: ``f * sigmoid(a_c alpha + b_c)``.

    After the SSR module of multifractal feature recalibration work for CNNs: each channel's
    feature map ``f`` is treated as a measure, its local singularity strength ``alpha``
    (:func:`local_singularity_strength` over ``radii``) is mapped by a learned per-channel
    affine (a depthwise 1x1x1 conv) and a sigmoid to a per-voxel gate that multiplies ``f``.

    Choices: the measure is ``|f|`` rather than ``relu(f)`` so the voxel being gated is always
    part of its own measure (``mu_r(x) >= |f(x)|``), which keeps the gradient through
    ``log(mu + eps)`` bounded where features are near zero; ``a_c`` starts at 0 and ``b_c`` at
    0, so the gate starts at exactly 0.5 everywhere and learns how to use ``alpha``. No
    cross-channel mixing. The whole computation runs in float32 with autocast off; the output
    has the input's dtype. ``(B, C, D, H, W)`` in and out, any spatial size.
    """

    def __init__(
        self, channels: int, radii: Sequence[int] = (1, 2, 3, 4), eps: float = 1e-6
    ) -> None:
        super().__init__()
        _check_channels(channels)
        self.radii = _check_radii(radii)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.channels = channels
        self.eps = float(eps)
        self.affine = nn.Conv3d(channels, channels, kernel_size=1, groups=channels, bias=True)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(
                f"SingularityStrengthRecalibration3D({self.channels}) expects "
                f"(B, {self.channels}, D, H, W), got {tuple(x.shape)}"
            )
        with _autocast_off(x.device):
            f = x.float()
            alpha = local_singularity_strength(f.abs(), self.radii, self.eps)
            weight = self.affine.weight.float()
            bias = self.affine.bias.float()
            gate = torch.sigmoid(F.conv3d(alpha, weight, bias, groups=self.channels))
            out = f * gate
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, radii={self.radii}, eps={self.eps}"


def make_recalibration(kind: str, channels: int) -> nn.Module:
    """Recalibration module by name: ``none`` (``nn.Identity``), ``se`` or ``ssr``.

    Unknown names raise ``ValueError`` with a did-you-mean suggestion.
    """
    _check_channels(channels)
    if kind == "none":
        return nn.Identity()
    if kind == "se":
        return SqueezeExcitation3D(channels)
    if kind == "ssr":
        return SingularityStrengthRecalibration3D(channels)
    hint = did_you_mean(str(kind), RECALIBRATIONS)
    raise ValueError(
        f"unknown recalibration {kind!r}{hint}; choose from {', '.join(RECALIBRATIONS)}"
    )
