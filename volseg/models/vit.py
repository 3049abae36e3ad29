"""Vision-transformer pieces for the TransUNet bottleneck (pre-norm blocks, SDPA attention).

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` with the
1/sqrt(d_head) scale, so flash / memory-efficient kernels are used on GPU. MONAI's
``SABlock(use_flash_attention=True)`` also calls SDPA but passes its dropout rate to SDPA in
eval mode too, so attention would stay stochastic at inference; this module applies attention
dropout only while training.

Positional embeddings are learned on a reference token grid and trilinearly resampled to the
token grid of the actual input, so training patches and sliding-window windows may differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from volseg.models._common import Int3


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, C)`` with SDPA."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_drop = nn.Dropout(dropout)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project tokens to q, k, v, each ``(B, heads, N, head_dim)``."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.split_heads(x)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        mlp_dim = int(round(hidden_size * mlp_ratio))
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = MultiHeadSelfAttention(hidden_size, num_heads, dropout)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, hidden_size),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBottleneck(nn.Module):
    """Feature map ``(B, C_in, d, h, w)`` -> tokens -> transformer -> map ``(B, hidden, d, h, w)``.

    ``pos_grid`` is the reference token grid the learned positional embedding lives on.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        pos_grid: Int3,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.pos_grid = pos_grid
        self.patch_embed = nn.Conv3d(in_channels, hidden_size, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden_size, *pos_grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, mlp_ratio, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def positional_embedding(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The positional embedding resampled (trilinear) to ``grid``: ``(1, hidden, *grid)``."""
        if tuple(grid) == tuple(self.pos_grid):
            return self.pos_embed
        return F.interpolate(
            self.pos_embed, size=tuple(grid), mode="trilinear", align_corners=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        b, c, *grid = x.shape
        x = x + self.positional_embedding(tuple(grid)).to(x.dtype)
        tokens = self.pos_drop(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(b, c, *grid)
