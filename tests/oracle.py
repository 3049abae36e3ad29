"""A stand-in segmentation network with a known answer, for tests of the predictor."""

from __future__ import annotations

import torch
from torch import nn


class OracleNet(nn.Module):
    """Logits +10 where the windowed intensity is bright (> ``level``), −10 elsewhere."""

    def __init__(self, level: float = 0.6) -> None:
        super().__init__()
        self.level = level
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.level, 10.0, -10.0) + 0 * self.dummy
