"""3D GAN for pseudo-masks: a residual healthy-lung generator and a 3D PatchGAN discriminator.

After Shabani et al., "Self-supervised region-aware segmentation of COVID-19 CT images using
3D GAN and contrastive learning" (Comput Biol Med 2022, doi 10.1016/j.compbiomed.2022.106033):
the generator maps a lung CT patch to its healthy-looking version; on a COVID scan the
residual ``x - G(x)`` inside the lung marks the lesions. The discriminator (after Isola et al.
2017's PatchGAN, made 3D, with spectral norm after Miyato et al. 2018) scores overlapping
patches as healthy-real or generated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetResBlock, UnetUpBlock
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from volseg.models._common import (
    NORMS,
    as_strides,
    check_positive_ints,
    crop_to,
    norm_spec,
    pad_to_multiple,
    total_stride,
)
from volseg.models.ushape import check_input

DEFAULT_STRIDES = ((2, 2, 1), (2, 2, 2), (2, 2, 2))


def clamp_straight_through(y: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Clamp values to [low, high] but pass gradients through unchanged.

    A plain clamp has zero gradient once ``x + delta`` overshoots the range, and an early
    overshoot then freezes those voxels for good; the straight-through version keeps pulling
    them back.
    """
    return y + (y.clamp(low, high) - y).detach()


class Generator3D(nn.Module):
    """Residual 3D encoder-decoder: ``G(x) = clamp(x + delta(x), 0, 1)``, shape ``(B, C, D, H, W)``.

    The last conv of ``delta`` starts at zero, so an untrained generator is the identity and
    training only has to learn the change (lesion removal). Intensities are CT scaled to
    [0, 1]; the output is clamped to that range with a straight-through gradient
    (:func:`clamp_straight_through`). Any input size works (padded inside).

    Args:
        in_channels: image channels (1).
        widths: channels per level, full resolution first; one more entry than ``strides``.
        strides: per-level downsampling (1 or 2 per axis).
        norm: "instance" | "group" | "batch".
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[Sequence[int] | int] = DEFAULT_STRIDES,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        check_positive_ints([in_channels], "in_channels")
        strides_t = as_strides(strides)
        widths_t = check_positive_ints(widths, "widths", length=len(strides_t) + 1)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        norm_t = norm_spec(norm, widths_t)
        self.init_args = {
            "in_channels": in_channels,
            "widths": list(widths_t),
            "strides": [list(s) for s in strides_t],
            "norm": norm,
        }
        self.in_channels = in_channels
        self.total_stride = total_stride(strides_t)
        self.down = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(widths_t):
            stride = (1, 1, 1) if level == 0 else strides_t[level - 1]
            self.down.append(
                UnetResBlock(3, prev, width, kernel_size=3, stride=stride, norm_name=norm_t)
            )
            prev = width
        self.up = nn.ModuleList(
            UnetUpBlock(
                3,
                widths_t[level + 1],
                widths_t[level],
                kernel_size=3,
                stride=1,
                upsample_kernel_size=strides_t[level],
                norm_name=norm_t,
            )
            for level in reversed(range(len(strides_t)))
        )
        # The head sees the raw intensities next to the decoder features: instance norm removes
        # absolute levels from the features, and the change to undo depends on them (HU).
        self.head = nn.Sequential(
            nn.Conv3d(widths_t[0] + in_channels, widths_t[0], kernel_size=3, padding=1),
            nn.LeakyReLU(0.01, inplace=True),
        )
        self.delta = nn.Conv3d(widths_t[0], in_channels, kernel_size=1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The additive change ``delta(x)`` before clamping, same shape as ``x``."""
        check_input(x, self.in_channels, type(self).__name__)
        padded, region = pad_to_multiple(x, self.total_stride)
        skips = []
        h = padded
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = skips.pop()
        for up, skip in zip(self.up, reversed(skips), strict=True):
            h = up(h, skip)
        return crop_to(self.delta(self.head(torch.cat((h, padded), dim=1))), region)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp_straight_through(x + self.residual(x))


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN: ``(B, C, D, H, W) -> (B, 1, d, h, w)`` real/fake logits per receptive patch.

    Strided convs (kernel ``stride + 2``, LeakyReLU 0.2) halve the size on each strided axis;
    two stride-1 convs produce the logits. Spectral norm on every conv keeps the critic
    1-Lipschitz-ish without batch statistics (batches of 3D patches are small).

    Args:
        in_channels: image channels (1).
        widths: channels per conv, one more entry than ``strides``.
        strides: per-level downsampling (1 or 2 per axis).
        use_spectral_norm: wrap every conv in spectral normalisation.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[Sequence[int] | int] = DEFAULT_STRIDES,
        use_spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        check_positive_ints([in_channels], "in_channels")
        strides_t = as_strides(strides)
        widths_t = check_positive_ints(widths, "widths", length=len(strides_t) + 1)
        self.init_args = {
            "in_channels": in_channels,
            "widths": list(widths_t),
            "strides": [list(s) for s in strides_t],
            "use_spectral_norm": use_spectral_norm,
        }
        self.in_channels = in_channels
        self.total_stride = total_stride(strides_t)

        def conv(
            cin: int, cout: int, kernel: tuple[int, ...], stride: tuple[int, ...]
        ) -> nn.Module:
            layer = nn.Conv3d(cin, cout, kernel_size=kernel, stride=stride, padding=1)
            return spectral_norm(layer) if use_spectral_norm else layer

        layers: list[nn.Module] = []
        prev = in_channels
        for stride, width in zip(strides_t, widths_t[:-1], strict=True):
            kernel = tuple(s + 2 for s in stride)
            layers += [conv(prev, width, kernel, stride), nn.LeakyReLU(0.2, inplace=True)]
            prev = width
        layers += [
            conv(prev, widths_t[-1], (3, 3, 3), (1, 1, 1)),
            nn.LeakyReLU(0.2, inplace=True),
            conv(widths_t[-1], 1, (3, 3, 3), (1, 1, 1)),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.net(x)
