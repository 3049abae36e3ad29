"""The network fine-tuning trains: the segmentation network plus its voxel projection head."""

from __future__ import annotations

import torch
from torch import nn


class FinetuneNet(nn.Module):
    """Segmentation network plus an optional voxel projection head, as one module.

    ``forward(x) -> (logits, projected embeddings or None)``. One module so DDP sees the
    embedding branch through ``forward``; the bundle keeps only ``seg``.
    """

    def __init__(self, seg: nn.Module, proj: nn.Module | None) -> None:
        super().__init__()
        self.seg = seg
        self.proj = proj

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.proj is None:
            return self.seg(x), None
        logits, emb = self.seg.forward_with_embedding(x)
        return logits, self.proj(emb)
