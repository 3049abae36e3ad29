"""Multi-process training under ``torchrun``: process group, DDP wrapping, metric reduction.

Every function here also works in a plain single process (no process group): reductions
return their input, barriers return at once, rank is 0 and world size 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank and world size from the process group (or the torchrun environment, or 1)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    return DistInfo(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local_rank
    )


def is_main_process() -> bool:
    return dist_info().is_main


def init_distributed() -> DistInfo:
    """Join the torchrun job if there is one (NCCL on GPU, gloo on CPU); idempotent.

    Without ``WORLD_SIZE > 1`` in the environment nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return dist_info()


def cleanup_distributed() -> None:
    """Leave the process group (after a barrier) if one is active.

    Training commands call it last: a torchrun worker that exits with the gloo/NCCL group
    still alive can abort ("terminate called without an active exception") and fail the job.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """Device collectives run on: the current GPU for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap_ddp(module: nn.Module, device: torch.device, **ddp_kwargs: Any) -> nn.Module:
    """Wrap in DistributedDataParallel when distributed and the module has trainable weights."""
    if not _active() or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **ddp_kwargs)


def all_reduce_mean(
    values: Mapping[str, float | torch.Tensor], weight: float = 1.0
) -> dict[str, float]:
    """Mean of each value over ranks, weighted by ``weight`` (e.g. samples on this rank).

    Every rank must pass the same keys. Single process: the values as floats.
    """
    keys = sorted(values)
    local = [float(values[k]) for k in keys]
    if not _active():
        return dict(zip(keys, local, strict=True))
    w = float(weight)
    buf = torch.tensor([v * w for v in local] + [w], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    total_w = buf[-1].item()
    if total_w <= 0:
        raise ValueError("all_reduce_mean: total weight over ranks is zero")
    return {k: buf[i].item() / total_w for i, k in enumerate(keys)}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects only)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """One ``obj`` per rank, in rank order, on every rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
