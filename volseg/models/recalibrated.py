"""Apply a recalibration module (SE or SSR) after a network block, the same way in every backbone.

``recalibrated(block, kind, channels)`` returns ``block`` unchanged for ``kind="none"`` (so
state-dict keys of networks without recalibration stay as they were) and otherwise a
:class:`Recalibrated` wrapper whose output is ``recal(block(*inputs))``. The wrapper forwards
any number of inputs, so it fits encoder blocks (``block(x)``) and decoder up-blocks
(``block(h, skip)``) alike. Backbones build their encoder blocks through it inside their
``encoder`` submodule, so Barlow Twins pretraining covers the encoder's recalibration weights.
"""

from __future__ import annotations

import torch
from torch import nn

from volseg.models.recalibration import RECALIBRATIONS, make_recalibration


def check_recalibration(kind: str) -> str:
    """``kind`` if it names a recalibration, else ``ValueError`` with a did-you-mean."""
    if kind not in RECALIBRATIONS:
        make_recalibration(kind, 1)  # raises the did-you-mean ValueError
    return kind


class Recalibrated(nn.Module):
    """A block followed by a recalibration of its output: ``recal(block(*inputs))``.

    ``block`` maps its inputs to ``(B, C, D, H, W)`` features and ``recal`` keeps that shape;
    state-dict keys are ``block.*`` and ``recal.*``.
    """

    def __init__(self, block: nn.Module, recal: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.recal = recal

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.recal(self.block(*inputs))


def recalibrated(block: nn.Module, kind: str, channels: int) -> nn.Module:
    """``block`` followed by ``make_recalibration(kind, channels)``; ``block`` itself for "none"."""
    recal = make_recalibration(check_recalibration(kind), channels)
    if isinstance(recal, nn.Identity):
        return block
    return Recalibrated(block, recal)


def recalibration_modules(model: nn.Module) -> list[nn.Module]:
    """The recalibration modules of ``model``, in registration order (for tests and reports)."""
    return [m.recal for m in model.modules() if isinstance(m, Recalibrated)]
