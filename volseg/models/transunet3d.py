"""3D TransUNet: residual CNN stem, ViT bottleneck, U-shaped decoder with skips.

After Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation" (arXiv:2102.04306, 2021), made volumetric: the CNN stem and decoder use 3D
MONAI blocks, the transformer runs over 3D tokens at the coarsest level, and strides may be
anisotropic so thick-slice axes are not downsampled as often as in-plane axes. An optional
SE/SSR recalibration follows every CNN block (encoder stages, bottleneck projection, decoder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn

from volseg.models._common import (
    NORMS,
    as_int3,
    as_strides,
    check_positive_ints,
    norm_spec,
    total_stride,
)
from volseg.models.recalibrated import check_recalibration, recalibrated
from volseg.models.ushape import UShapedNet
from volseg.models.vit import ViTBottleneck

DEFAULT_WIDTHS = (16, 32, 64, 128, 256)
DEFAULT_STRIDES = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))


class TransUNetEncoder(nn.Module):
    """CNN stem + ViT: ``x -> (skips, bottleneck)``.

    ``skips[i]`` has ``widths[i]`` channels at stride ``prod(strides[:i])`` (full resolution
    first); ``bottleneck`` is ``(B, hidden_size, *token_grid)`` at the total stride. Any input
    size works here (convolutions round up, the positional embedding is resampled); the full
    network pads so the decoder can mirror the encoder exactly.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        widths: tuple[int, ...],
        strides: tuple[tuple[int, int, int], ...],
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        norm: tuple[str, dict],
        img_size: tuple[int, int, int],
        recalibration: str = "none",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.skip_channels = widths[:-1]
        self.out_channels = hidden_size
        self.total_stride = total_stride(strides)
        self.stages = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(widths):
            stride = (1, 1, 1) if level == 0 else strides[level - 1]
            block = UnetResBlock(3, prev, width, kernel_size=3, stride=stride, norm_name=norm)
            self.stages.append(recalibrated(block, recalibration, width))
            prev = width
        grid = tuple(math.ceil(s / t) for s, t in zip(img_size, self.total_stride, strict=True))
        self.vit = ViTBottleneck(
            widths[-1], hidden_size, depth, num_heads, mlp_ratio, dropout, grid
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips: list[torch.Tensor] = []
        for stage in self.stages[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.stages[-1](x)
        return skips, self.vit(x)


class TransUNet3D(UShapedNet):
    """3D TransUNet for volumetric segmentation: ``(B, in, D, H, W) -> (B, out, D, H, W)`` logits.

    Args:
        in_channels: input channels (1 for CT scaled from [-1000, 400] HU to [0, 1]).
        out_channels: output logit channels (1 for binary lesion masks).
        widths: conv channels per level, full resolution first; one more entry than ``strides``.
            The last width feeds the ViT at the total stride; the others are decoder skips.
        strides: per-level downsampling, each 1 or 2 per axis, e.g. ``(2, 2, 1)`` keeps the
            thick-slice third axis. The default gives a total stride of (16, 16, 8).
        hidden_size, depth, num_heads, mlp_ratio: ViT width, number of blocks, attention
            heads (``hidden_size`` divisible by it), MLP width factor.
        dropout: dropout in the transformer (attention, MLP, positional embedding).
        norm: "instance" | "group" | "batch" for the conv blocks.
        img_size: reference patch size on which the positional embedding grid is defined;
            other sizes get a trilinearly resampled embedding.
        recalibration: "none" | "se" | "ssr" after every CNN block: the encoder stages (inside
            ``encoder``), the bottleneck projection and each decoder block. Not on the ViT.

    Inputs of any spatial size are zero-padded to a multiple of the total stride and the
    output cropped back: the output size always equals the input size. ``encoder`` holds the
    stem and the ViT (state-dict keys ``encoder.*``) so pretrained weights load by name.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        strides: Sequence[Sequence[int] | int] = DEFAULT_STRIDES,
        hidden_size: int = 384,
        depth: int = 8,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        norm: str = "instance",
        img_size: Sequence[int] | int = (96, 96, 32),
        recalibration: str = "none",
    ) -> None:
        super().__init__()
        check_positive_ints([in_channels], "in_channels")
        check_positive_ints([out_channels], "out_channels")
        strides_t = as_strides(strides)
        widths_t = check_positive_ints(widths, "widths", length=len(strides_t) + 1)
        check_positive_ints([hidden_size], "hidden_size")
        check_positive_ints([depth], "depth")
        check_positive_ints([num_heads], "num_heads")
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        img_size_t = as_int3(img_size, "img_size")
        check_recalibration(recalibration)
        norm_t = norm_spec(norm, widths_t)
        self._record(
            in_channels,
            out_channels,
            widths_t[0],
            widths=list(widths_t),
            strides=[list(s) for s in strides_t],
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            norm=norm,
            img_size=list(img_size_t),
            recalibration=recalibration,
        )
        self.encoder = TransUNetEncoder(
            in_channels=in_channels,
            widths=widths_t,
            strides=strides_t,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            norm=norm_t,
            img_size=img_size_t,
            recalibration=recalibration,
        )
        self.bottleneck_proj = recalibrated(
            UnetBasicBlock(3, hidden_size, widths_t[-1], kernel_size=3, stride=1, norm_name=norm_t),
            recalibration,
            widths_t[-1],
        )
        self.up_blocks = nn.ModuleList(
            recalibrated(
                UnetUpBlock(
                    3,
                    widths_t[level + 1],
                    widths_t[level],
                    kernel_size=3,
                    stride=1,
                    upsample_kernel_size=strides_t[level],
                    norm_name=norm_t,
                ),
                recalibration,
                widths_t[level],
            )
            for level in reversed(range(len(strides_t)))
        )
        self.head = UnetOutBlock(3, widths_t[0], out_channels)

    def decode(self, skips: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """The ViT bottleneck's tokens projected back, then the plain U-net decoder."""
        return super().decode(skips, self.bottleneck_proj(h))
