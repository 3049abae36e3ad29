"""The shared frame of the U-shaped backbones (UNet3D, ResUNet3D, UNet++3D, TransUNet3D).

A subclass builds ``encoder`` (``x -> (skips, bottleneck)``, with ``total_stride``), its
decoder and ``head``, records its constructor arguments with :meth:`UShapedNet._record` and,
unless its decoder is the plain one (``up_blocks``, deepest first, each ``up(h, skip)``),
overrides :meth:`decode`. The input is padded to a multiple of the total stride and every
output cropped back, so any input size works; ``forward_with_embedding`` gives the last
decoder features for the voxel contrastive loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from volseg.models._common import crop_to, pad_to_multiple


def check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    """Refuse anything that is not ``(B, in_channels, D, H, W)``."""
    if x.ndim != 5 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects a (B, {in_channels}, D, H, W) tensor, got shape {tuple(x.shape)}"
        )


class UShapedNet(nn.Module):
    """Base of the U-shaped segmentation networks: ``(B, C, D, H, W)`` in, logits out."""

    encoder: nn.Module
    head: nn.Module
    init_args: dict[str, Any]

    def _record(
        self, in_channels: int, out_channels: int, embedding_channels: int, **args: Any
    ) -> None:
        """Keep the constructor arguments (``init_args``, so a checkpoint can rebuild the
        network) and the channel counts every backbone exposes."""
        self.init_args = {"in_channels": in_channels, "out_channels": out_channels, **args}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.embedding_channels = embedding_channels

    @property
    def total_stride(self) -> tuple[int, int, int]:
        """Input sizes that are multiples of this need no internal padding."""
        return tuple(self.encoder.total_stride)  # type: ignore[return-value]

    def decode(self, skips: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """The plain U-net decoder: ``up_blocks`` (deepest first), each fed its skip."""
        for up, skip in zip(self.up_blocks, reversed(skips), strict=True):  # type: ignore[attr-defined]
            h = up(h, skip)
        return h

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, out, D, H, W)`` and the last decoder features ``(B, E, D, H, W)``."""
        check_input(x, self.in_channels, type(self).__name__)
        padded, region = pad_to_multiple(x, self.total_stride)
        skips, h = self.encoder(padded)
        h = self.decode(list(skips), h)
        return crop_to(self.head(h), region), crop_to(h, region)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]
