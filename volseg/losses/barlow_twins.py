"""Barlow Twins redundancy-reduction loss, with the cross-correlation over the global DDP batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from volseg.losses._weights import at_least_float32, check_same_shape


def _distributed_world_size() -> int:
    """World size of the default process group, or 1 when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherBatch(torch.autograd.Function):
    """All ranks' ``(N, D)`` batches concatenated in rank order, with the backward of a
    gather: each rank's slice receives the gradient summed over every rank's copy.

    Public collectives only (``all_gather``, ``all_reduce``; gloo and NCCL):
    ``torch.distributed.nn.functional.all_gather`` is deprecated (torch 2.13 warns) in favour
    of a private module."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), z.shape[0]
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_batch(z: torch.Tensor) -> torch.Tensor:
    """Concatenate ``z`` ``(N, D)`` from all ranks along the batch, keeping gradients.

    The backward sums the gradient of every rank's copy of the global batch back onto the
    local slice. Every rank must hold the same local batch size. On one process ``z`` is
    returned unchanged.
    """
    if _distributed_world_size() <= 1:
        return z
    return _GatherBatch.apply(z.contiguous())


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss (Zbontar et al., ICML 2021, arXiv:2103.03230).

    For embeddings ``z1, z2`` of shape ``(N, D)`` (two views of the same N samples)::

        ẑ = (z - mean_batch(z)) / sqrt(var_batch(z) + eps)      # biased variance (÷N), no affine
        C = ẑ1ᵀ ẑ2 / N                                          # (D, D) cross-correlation
        L = Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²

    The normalisation is ``BatchNorm1d(affine=False)`` in training mode, as in the paper's code,
    so ``C`` is the Pearson correlation and identical views give ``C_ii = 1`` (up to ``eps``).

    Relation to ``monai.losses.BarlowTwinsLoss``: MONAI divides by the *unbiased* std plus 1e-6,
    so (eps aside) its matrix is ``C_monai = C · (N - 1) / N``; the two losses agree when that
    factor is applied to ``C`` (not a constant factor on the loss).

    Under DDP (process group initialised, world size > 1) both views are gathered from all
    ranks with an autograd-aware all-gather, so the batch statistics and ``C`` use the global
    batch ``N = world_size · N_local``. Every rank then holds the same loss; the gathered
    backward sums the rank copies, so each rank's parameter gradient is ``world_size`` times
    its local share and DDP's gradient *averaging* yields exactly the single-process gradient
    on the concatenated batch. All ranks must use the same local batch size.

    Computed in at least float32 with autocast disabled.

    Args:
        lambda_offdiag: weight λ ≥ 0 of the off-diagonal (redundancy) term; paper: 5e-3.
        eps: added to the batch variance before the square root (BatchNorm's default 1e-5).
    """

    def __init__(self, lambda_offdiag: float = 5e-3, eps: float = 1e-5) -> None:
        super().__init__()
        if not lambda_offdiag >= 0:
            raise ValueError(f"lambda_offdiag must be >= 0, got {lambda_offdiag}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.lambda_offdiag = float(lambda_offdiag)
        self.eps = float(eps)

    def cross_correlation(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """The ``(D, D)`` cross-correlation matrix ``C`` of the (gathered) batch."""
        if z1.ndim != 2:
            raise ValueError(f"embeddings must have shape (N, D), got {tuple(z1.shape)}")
        check_same_shape("z1", z1, "z2", z2)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1 = gather_batch(at_least_float32(z1))
            z2 = gather_batch(at_least_float32(z2))
            n = z1.shape[0]
            if n < 2:
                raise ValueError(f"Barlow Twins needs a (global) batch of at least 2, got {n}")
            return self._normalise(z1).T @ self._normalise(z2) / n

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(z, dim=0, correction=0)
        return (z - mean) / torch.sqrt(var + self.eps)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Scalar loss for two views' embeddings ``(N, D)`` each."""
        c = self.cross_correlation(z1, z2)
        diag = torch.diagonal(c)
        on_diag = (1.0 - diag).pow(2).sum()
        eye = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
        off_diag = c.pow(2).masked_fill(eye, 0.0).sum()
        return on_diag + self.lambda_offdiag * off_diag
