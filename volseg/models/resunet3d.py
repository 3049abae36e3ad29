"""3D residual U-Net: residual units in every encoder and decoder level, built from MONAI blocks.

After Zhang, Liu and Wang, "Road Extraction by Deep Residual U-Net" (IEEE GRSL 2018) and the
residual-unit U-Net of Kerfoot et al. (STACOM 2018) that MONAI's ``UNet`` implements: each
level is a MONAI ``ResidualUnit`` (``num_res_units`` conv-norm-act subunits around an identity
or projection shortcut), downsampling by a strided first convolution, upsampling by a
transposed convolution whose output is concatenated with the skip and fused by another
residual unit. Built level by level (not via ``monai.networks.nets.UNet``, whose recursive
skip wrapper hides the encoder) so ``encoder`` can be pretrained on its own and the last
decoder features serve as the voxel embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ResidualUnit, UnetOutBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import nn

from volseg.models._common import Int3, norm_spec
from volseg.models.level_encoder import LevelEncoder, check_level_args
from volseg.models.recalibrated import recalibrated
from volseg.models.ushape import UShapedNet

DEFAULT_FILTERS = (32, 64, 128, 256, 320)
DEFAULT_STRIDES = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


def residual_unit(
    in_channels: int,
    out_channels: int,
    stride: Int3 | int,
    subunits: int,
    norm: tuple[str, dict],
    dropout: float,
) -> ResidualUnit:
    """MONAI ``ResidualUnit`` with volseg's act/norm: ``subunits`` 3x3x3 conv-norm-act layers."""
    return ResidualUnit(
        3,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=3,
        subunits=subunits,
        act=ACT,
        norm=norm,
        dropout=dropout or None,
    )


class ResUpBlock(nn.Module):
    """``(h, skip) -> unit(cat[up(h), skip])``: transposed-conv upsampling, then a residual unit.

    ``h`` is ``(B, in_channels, ...)`` at the coarser level, ``skip`` ``(B, out_channels, ...)``
    at ``stride`` times its size; the output has ``out_channels`` channels at the skip's size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: Int3,
        subunits: int,
        norm: tuple[str, dict],
        dropout: float,
    ) -> None:
        super().__init__()
        self.up = get_conv_layer(
            3,
            in_channels,
            out_channels,
            kernel_size=stride,
            stride=stride,
            conv_only=True,
            is_transposed=True,
        )
        self.unit = residual_unit(2 * out_channels, out_channels, 1, subunits, norm, dropout)

    def forward(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.unit(torch.cat([self.up(h), skip], dim=1))


class ResUNet3D(UShapedNet):
    """3D residual U-Net: ``(B, in, D, H, W) -> (B, out, D, H, W)`` logits.

    Args:
        in_channels, out_channels: input channels and output logit channels.
        filters: channels per level, full resolution first; one more entry than ``strides``.
        strides: per-level downsampling (1 or 2 per axis); default total stride (16, 16, 8).
        num_res_units: conv-norm-act subunits inside each residual unit (>= 1).
        norm: "instance" | "group" | "batch".
        dropout: dropout inside the residual units.
        recalibration: "none" | "se" | "ssr" after every encoder level (inside ``encoder``)
            and every decoder block.

    Any input size works (zero-padded to the total stride inside, output cropped back).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        filters: Sequence[int] = DEFAULT_FILTERS,
        strides: Sequence[Sequence[int] | int] = DEFAULT_STRIDES,
        num_res_units: int = 2,
        norm: str = "instance",
        dropout: float = 0.0,
        recalibration: str = "none",
    ) -> None:
        super().__init__()
        filters_t, strides_t = check_level_args(
            in_channels=in_channels,
            out_channels=out_channels,
            filters=filters,
            strides=strides,
            norm=norm,
            dropout=dropout,
            recalibration=recalibration,
        )
        if (
            not isinstance(num_res_units, int)
            or isinstance(num_res_units, bool)
            or num_res_units < 1
        ):
            raise ValueError(f"num_res_units must be a positive int, got {num_res_units!r}")
        self._record(
            in_channels,
            out_channels,
            filters_t[0],
            filters=list(filters_t),
            strides=[list(s) for s in strides_t],
            num_res_units=num_res_units,
            norm=norm,
            dropout=dropout,
            recalibration=recalibration,
        )
        norm_t = norm_spec(norm, filters_t)
        level_strides: list[Int3 | int] = [1, *strides_t]
        levels = nn.ModuleList()
        prev = in_channels
        for width, stride in zip(filters_t, level_strides, strict=True):
            unit = residual_unit(prev, width, stride, num_res_units, norm_t, dropout)
            levels.append(recalibrated(unit, recalibration, width))
            prev = width
        self.encoder = LevelEncoder(
            levels, in_channels=in_channels, filters=filters_t, strides=strides_t
        )
        self.up_blocks = nn.ModuleList(  # deepest first
            recalibrated(
                ResUpBlock(
                    filters_t[level + 1],
                    filters_t[level],
                    strides_t[level],
                    num_res_units,
                    norm_t,
                    dropout,
                ),
                recalibration,
                filters_t[level],
            )
            for level in reversed(range(len(strides_t)))
        )
        self.head = UnetOutBlock(3, filters_t[0], out_channels)
