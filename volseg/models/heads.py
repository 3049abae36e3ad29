"""Projection heads for self-supervised and contrastive training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ProjectorHead(nn.Module):
    """Barlow Twins projector: global average pool, then (Linear-BN-ReLU) x (n-1), Linear.

    After Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
    (ICML 2021): hidden linears without bias followed by BatchNorm1d and ReLU, the last linear
    without bias; the loss batch-normalises the output itself.
    ``(B, C, D, H, W)`` (or already pooled ``(B, C)``) -> ``(B, dims[-1])``.
    """

    def __init__(self, in_channels: int, dims: Sequence[int] = (512, 512, 512)) -> None:
        super().__init__()
        dims_t = tuple(dims)
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if not dims_t or not all(isinstance(v, int) and v >= 1 for v in dims_t):
            raise ValueError(f"dims must be a non-empty sequence of positive ints, got {dims!r}")
        self.init_args = {"in_channels": in_channels, "dims": list(dims_t)}
        self.out_dim = dims_t[-1]
        layers: list[nn.Module] = []
        prev = in_channels
        for dim in dims_t[:-1]:
            layers += [nn.Linear(prev, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
            prev = dim
        layers.append(nn.Linear(prev, dims_t[-1], bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            x = x.mean(dim=(2, 3, 4))
        elif x.ndim != 2:
            raise ValueError(
                f"ProjectorHead expects (B, C, D, H, W) or (B, C), got {tuple(x.shape)}"
            )
        return self.net(x)


class VoxelProjectionHead(nn.Module):
    """Per-voxel projection for the supervised contrastive loss: 1x1x1 conv, ReLU, 1x1x1 conv.

    ``(B, C, D, H, W) -> (B, out_dim, D, H, W)``; L2 normalisation is left to the loss.
    """

    def __init__(self, in_channels: int, out_dim: int = 64, hidden: int | None = None) -> None:
        super().__init__()
        if in_channels < 1 or out_dim < 1:
            raise ValueError(
                f"in_channels and out_dim must be positive, got {in_channels}, {out_dim}"
            )
        hidden = hidden or max(in_channels, out_dim)
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}")
        self.init_args = {"in_channels": in_channels, "out_dim": out_dim, "hidden": hidden}
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, out_dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"VoxelProjectionHead expects (B, C, D, H, W), got {tuple(x.shape)}")
        return self.net(x)
