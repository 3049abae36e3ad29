"""3D UNet++: a U-Net whose skips are nested, densely connected convolution nodes.

After Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation"
(DLMIA 2018). Node ``X[i][j]`` (level ``i``, column ``j``) fuses every earlier node of its
level, ``X[i][0..j-1]``, with the upsampled ``X[i+1][j-1]``; column 0 is the encoder and the
last node of level 0, ``X[0][L]``, feeds the head and is the voxel embedding (the paper's
model without deep supervision). MONAI's ``BasicUNetPlusPlus`` is fixed at five levels with
isotropic 2x pooling and does not expose its encoder, so this network is built from MONAI's
``UnetBasicBlock`` (conv-norm-act twice; a strided first conv downsamples, allowing
anisotropic strides) and transposed convolutions, with volseg's model interface.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetBasicBlock, UnetOutBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import nn

from volseg.models._common import Int3, norm_spec
from volseg.models.level_encoder import LevelEncoder, check_level_args
from volseg.models.recalibrated import recalibrated
from volseg.models.ushape import UShapedNet

DEFAULT_FILTERS = (32, 64, 128, 256, 320)
DEFAULT_STRIDES = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))


class NestedNode(nn.Module):
    """UNet++ node ``X[i][j]``: ``conv(cat[X[i][0], ..., X[i][j-1], up(X[i+1][j-1])])``.

    Called as ``node(lower, *same_level)``: ``lower`` is ``(B, lower_channels, ...)`` one level
    coarser, each of the ``j`` ``same_level`` tensors ``(B, channels, ...)`` at ``stride`` times
    its size; the output has ``channels`` channels at that size.
    """

    def __init__(
        self,
        lower_channels: int,
        channels: int,
        column: int,
        stride: Int3,
        norm: tuple[str, dict],
        dropout: float,
    ) -> None:
        super().__init__()
        self.column = column
        self.up = get_conv_layer(
            3,
            lower_channels,
            channels,
            kernel_size=stride,
            stride=stride,
            conv_only=True,
            is_transposed=True,
        )
        self.conv = UnetBasicBlock(
            3,
            (column + 1) * channels,
            channels,
            kernel_size=3,
            stride=1,
            norm_name=norm,
            dropout=dropout or None,
        )

    def forward(self, lower: torch.Tensor, *same_level: torch.Tensor) -> torch.Tensor:
        if len(same_level) != self.column:
            raise ValueError(f"node of column {self.column} needs {self.column} same-level inputs")
        return self.conv(torch.cat([*same_level, self.up(lower)], dim=1))


class UNetPlusPlus3D(UShapedNet):
    """3D UNet++ (nested dense skips): ``(B, in, D, H, W) -> (B, out, D, H, W)`` logits.

    Args:
        in_channels, out_channels: input channels and output logit channels.
        filters: channels per level, full resolution first; one more entry than ``strides``.
            Every node of level ``i`` has ``filters[i]`` channels.
        strides: per-level downsampling (1 or 2 per axis); default total stride (16, 16, 8).
        norm: "instance" | "group" | "batch".
        dropout: dropout inside the conv blocks.
        recalibration: "none" | "se" | "ssr" after every node: the encoder column (inside
            ``encoder``) and every nested decoder node.

    ``nodes[j - 1][i]`` is node ``X[i][j]`` for columns ``j = 1..L`` (``L = len(strides)``).
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
        self._record(
            in_channels,
            out_channels,
            filters_t[0],
            filters=list(filters_t),
            strides=[list(s) for s in strides_t],
            norm=norm,
            dropout=dropout,
            recalibration=recalibration,
        )
        norm_t = norm_spec(norm, filters_t)
        levels = nn.ModuleList()
        prev = in_channels
        for width, stride in zip(filters_t, [(1, 1, 1), *strides_t], strict=True):
            block = UnetBasicBlock(
                3,
                prev,
                width,
                kernel_size=3,
                stride=stride,
                norm_name=norm_t,
                dropout=dropout or None,
            )
            levels.append(recalibrated(block, recalibration, width))
            prev = width
        self.encoder = LevelEncoder(
            levels, in_channels=in_channels, filters=filters_t, strides=strides_t
        )
        depth = len(strides_t)
        self.nodes = nn.ModuleList(
            nn.ModuleList(
                recalibrated(
                    NestedNode(
                        filters_t[i + 1], filters_t[i], column, strides_t[i], norm_t, dropout
                    ),
                    recalibration,
                    filters_t[i],
                )
                for i in range(depth - column + 1)
            )
            for column in range(1, depth + 1)
        )
        self.head = UnetOutBlock(3, filters_t[0], out_channels)

    def decode(self, skips: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """The nested decoder: node (i, j) sees the node below and every node left of it;
        the last level-0 node's features are the embedding."""
        grid: list[list[torch.Tensor]] = [[s] for s in skips] + [[h]]  # grid[i][j]
        for column, nodes in enumerate(self.nodes, start=1):
            for i, node in enumerate(nodes):
                grid[i].append(node(grid[i + 1][column - 1], *grid[i][:column]))
        return grid[0][-1]
