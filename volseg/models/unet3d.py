"""3D U-Net (Ronneberger et al. 2015, made 3D) built from MONAI's DynUNet blocks.

The blocks (double conv-norm-act encoder levels, or residual ones with ``res_block=True``;
transposed-conv decoder; 1x1x1 head) are exactly those ``monai.networks.nets.DynUNet`` builds
(nnU-Net style, after Isensee et al. 2021); they are regrouped into ``encoder`` / decoder
submodules so pretrained encoder weights load by name and the last decoder features can be
returned as the voxel embedding. An optional SE/SSR recalibration follows every block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet
from torch import nn

from volseg.models._common import (
    NORMS,
    as_strides,
    check_positive_ints,
    norm_spec,
    total_stride,
)
from volseg.models.recalibrated import check_recalibration, recalibrated
from volseg.models.ushape import UShapedNet

DEFAULT_FILTERS = (32, 64, 128, 256, 320)
DEFAULT_STRIDES = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))


class UNetEncoder(nn.Module):
    """``x -> (skips, bottleneck)``: ``skips[i]`` has ``filters[i]`` channels, full resolution first."""

    def __init__(
        self,
        input_block: nn.Module,
        downsamples: nn.ModuleList,
        bottleneck: nn.Module,
        *,
        in_channels: int,
        filters: tuple[int, ...],
        strides: tuple[tuple[int, int, int], ...],
    ) -> None:
        super().__init__()
        self.input_block = input_block
        self.downsamples = downsamples
        self.bottleneck = bottleneck
        self.in_channels = in_channels
        self.skip_channels = filters[:-1]
        self.out_channels = filters[-1]
        self.total_stride = total_stride(strides)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.input_block(x)
        skips = [x]
        for down in self.downsamples:
            x = down(x)
            skips.append(x)
        return skips, self.bottleneck(x)


class UNet3D(UShapedNet):
    """3D U-Net (Ronneberger et al. 2015): ``(B, in, D, H, W) -> (B, out, D, H, W)`` logits.

    Args:
        in_channels, out_channels: input channels and output logit channels.
        filters: channels per level, full resolution first; one more entry than ``strides``.
        strides: per-level downsampling (1 or 2 per axis); default total stride (16, 16, 8).
        norm: "instance" | "group" | "batch".
        res_block: residual conv blocks (True) or the original plain double conv (False).
        dropout: dropout inside the conv blocks.
        recalibration: "none" | "se" | "ssr", applied after every encoder and decoder block
            (see ``volseg.models.recalibration``); the encoder's ones live in ``encoder``.

    Any input size works (zero-padded to the total stride inside, output cropped back).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        filters: Sequence[int] = DEFAULT_FILTERS,
        strides: Sequence[Sequence[int] | int] = DEFAULT_STRIDES,
        norm: str = "instance",
        res_block: bool = False,
        dropout: float = 0.0,
        recalibration: str = "none",
    ) -> None:
        super().__init__()
        check_positive_ints([in_channels], "in_channels")
        check_positive_ints([out_channels], "out_channels")
        strides_t = as_strides(strides)
        if len(strides_t) < 2:
            raise ValueError("strides must list at least two levels")
        filters_t = check_positive_ints(filters, "filters", length=len(strides_t) + 1)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_recalibration(recalibration)
        self._record(
            in_channels,
            out_channels,
            filters_t[0],
            filters=list(filters_t),
            strides=[list(s) for s in strides_t],
            norm=norm,
            res_block=res_block,
            dropout=dropout,
            recalibration=recalibration,
        )
        all_strides = [(1, 1, 1), *strides_t]
        net = DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * len(all_strides),
            strides=all_strides,
            upsample_kernel_size=list(strides_t),
            filters=list(filters_t),
            norm_name=norm_spec(norm, filters_t),
            dropout=dropout or None,
            res_block=res_block,
        )

        # Take DynUNet's initialised blocks; its recursive skip wrapper is not kept, so every
        # parameter has exactly one state-dict key. Recalibration wraps each block
        # (a no-op for "none", which keeps DynUNet's keys).
        def recal(block: nn.Module, channels: int) -> nn.Module:
            return recalibrated(block, recalibration, channels)

        self.encoder = UNetEncoder(
            recal(net.input_block, filters_t[0]),
            nn.ModuleList(
                recal(down, width)
                for down, width in zip(net.downsamples, filters_t[1:-1], strict=True)
            ),
            recal(net.bottleneck, filters_t[-1]),
            in_channels=in_channels,
            filters=filters_t,
            strides=strides_t,
        )
        self.up_blocks = nn.ModuleList(  # deepest first
            recal(up, width)
            for up, width in zip(net.upsamples, reversed(filters_t[:-1]), strict=True)
        )
        self.head = net.output_block
