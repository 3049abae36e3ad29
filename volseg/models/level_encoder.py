"""A CNN encoder made of one block per resolution level, with volseg's encoder interface.

Shared by the residual U-Net and UNet++: ``levels[0]`` keeps full resolution, ``levels[i]``
downsamples by ``strides[i - 1]``. ``forward(x) -> (skips, bottleneck)`` with the outputs of
all levels but the last as skips (full resolution first) and the last as the bottleneck, the
interface Barlow Twins pretraining and the decoders rely on. ``check_level_args`` validates
the constructor arguments these networks share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from volseg.models._common import (
    Int3,
    as_strides,
    check_positive_ints,
    norm_spec,
    total_stride,
)
from volseg.models.recalibrated import check_recalibration


class LevelEncoder(nn.Module):
    """``x -> (skips, bottleneck)``: ``skips[i]`` has ``filters[i]`` channels at stride
    ``prod(strides[:i])``; ``bottleneck`` has ``filters[-1]`` channels at the total stride.

    Any input size works (strided convolutions round up); the full networks pad to the total
    stride so their decoders mirror the encoder exactly.
    """

    def __init__(
        self,
        levels: nn.ModuleList,
        *,
        in_channels: int,
        filters: tuple[int, ...],
        strides: tuple[Int3, ...],
    ) -> None:
        super().__init__()
        if len(levels) != len(filters) or len(filters) != len(strides) + 1:
            raise ValueError(
                f"need one level per filter and one stride fewer: {len(levels)} levels, "
                f"{len(filters)} filters, {len(strides)} strides"
            )
        self.levels = levels
        self.in_channels = in_channels
        self.skip_channels = filters[:-1]
        self.out_channels = filters[-1]
        self.total_stride = total_stride(strides)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips: list[torch.Tensor] = []
        for level in self.levels[:-1]:
            x = level(x)
            skips.append(x)
        return skips, self.levels[-1](x)


def check_level_args(
    *,
    in_channels: int,
    out_channels: int,
    filters: Sequence[int],
    strides: Sequence[Sequence[int] | int],
    norm: str,
    dropout: float,
    recalibration: str,
) -> tuple[tuple[int, ...], tuple[Int3, ...]]:
    """Validate the arguments level-structured U-Nets share; ``(filters, strides)`` as tuples.

    ``filters`` needs one entry more than ``strides`` (at least two strides); each check raises
    ``ValueError`` naming the argument.
    """
    check_positive_ints([in_channels], "in_channels")
    check_positive_ints([out_channels], "out_channels")
    strides_t = as_strides(strides)
    if len(strides_t) < 2:
        raise ValueError("strides must list at least two levels")
    filters_t = check_positive_ints(filters, "filters", length=len(strides_t) + 1)
    norm_spec(norm, filters_t)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    check_recalibration(recalibration)
    return filters_t, strides_t
