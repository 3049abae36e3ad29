"""An nnU-Net-style plain convolutional U-Net, for the training-throughput benchmark only.

The architecture follows the description in Isensee et al., "nnU-Net: a self-configuring
method for deep learning-based biomedical image segmentation" (Nature Methods 2021) and its
3d_fullres default for a 128^3 patch: six resolution stages with 32, 64, 128, 256, 320, 320
features; every stage is two (3x3x3 conv -> InstanceNorm -> LeakyReLU) blocks, the first
conv of stages 2..6 has stride 2 (no pooling); the decoder upsamples with a stride-2
transposed convolution, concatenates the skip and applies two more conv blocks; a 1x1x1 conv
gives the logits. About 31 M parameters in 3D. Deep supervision heads are omitted (they add
well under 1 % of the FLOPs). This is not a volseg model: it exists to compare volseg's
TransUNet3D against a well-known GPU-efficient baseline in ``bench/train_bench.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_FEATURES = (32, 64, 128, 256, 320, 320)


class ConvNormAct(nn.Sequential):
    """3x3x3 convolution (optionally strided), affine InstanceNorm, LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class Stage(nn.Sequential):
    """Two conv blocks; the first one downsamples by ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, stride),
            ConvNormAct(out_channels, out_channels),
        )


class PlainConvUNet(nn.Module):
    """Plain conv U-Net: ``(B, in, D, H, W) -> (B, out, D, H, W)`` logits.

    Args:
        in_channels, out_channels: input channels and output logit channels.
        features: channels per stage, full resolution first; stage ``i > 0`` halves every
            spatial axis, so inputs must be multiples of ``2 ** (len(features) - 1)``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
    ) -> None:
        super().__init__()
        feats = tuple(features)
        if len(feats) < 2 or not all(isinstance(f, int) and f >= 1 for f in feats):
            raise ValueError(f"features must be at least two positive ints, got {features!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}"
            )
        self.init_args = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": list(feats),
        }
        self.in_channels = in_channels
        self.divisor = 2 ** (len(feats) - 1)
        self.encoder = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(feats):
            self.encoder.append(Stage(prev, width, stride=1 if level == 0 else 2))
            prev = width
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(feats) - 1)):
            self.upsample.append(
                nn.ConvTranspose3d(feats[level + 1], feats[level], kernel_size=2, stride=2)
            )
            self.decoder.append(Stage(2 * feats[level], feats[level], stride=1))
        self.head = nn.Conv3d(feats[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PlainConvUNet expects a (B, {self.in_channels}, D, H, W) tensor, "
                f"got shape {tuple(x.shape)}"
            )
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"PlainConvUNet needs spatial sizes that are multiples of {self.divisor}, "
                f"got {tuple(x.shape[2:])}"
            )
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is not a skip
        for up, stage in zip(self.upsample, self.decoder, strict=True):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)
