"""One training step's context and the running means of its logged values.

:class:`StepContext` is what a stage's step function gets from the
:class:`~volseg.engine.trainer.Trainer`: device transfer, autocast, and one backward +
optimizer step (AMP scaler, gradient clipping, divergence check).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from volseg.config import TrainConfig
from volseg.engine.device import (
    amp_dtype,
    training_memory_format,
)
from volseg.engine.distributed import (
    DistInfo,
)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Weights became NaN/inf; the last good checkpoint is left untouched."""


class StepContext:
    """Helpers handed to ``step_fn``: device, mixed precision, the backward/optimizer step."""

    def __init__(
        self, device: torch.device, dist: DistInfo, cfg: TrainConfig, scaler: torch.amp.GradScaler
    ) -> None:
        self.device = device
        self.dist = dist
        self.cfg = cfg
        self.scaler = scaler
        self.amp_dtype = amp_dtype(device, cfg.amp)
        self.memory_format = training_memory_format(device, cfg.channels_last)
        self.epoch = 0
        self.global_step = 0
        self._stepped = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass: bf16/fp16 on CUDA, plain fp32 on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, obj: Any) -> Any:
        """Move tensors (also inside dicts, lists, tuples) to the training device."""
        if isinstance(obj, torch.Tensor):
            moved = obj.to(self.device, non_blocking=True)
            if self.memory_format is not None and moved.ndim == 5:
                moved = moved.contiguous(memory_format=self.memory_format)
            return moved
        if isinstance(obj, Mapping):
            return {k: self.to_device(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_device(v) for v in obj)
        return obj

    def backward_step(
        self,
        loss: torch.Tensor,
        optimizer: Optimizer,
        modules: Iterable[nn.Module] | None = None,
        *,
        retain_graph: bool = False,
    ) -> torch.Tensor | None:
        """Backward (loss-scaled for fp16), clip to ``cfg.grad_clip``, step, zero grads.

        ``modules``: whose gradients to clip (default: the optimizer's parameters). Returns
        the pre-clip gradient norm as a tensor (no device sync), or None without clipping.
        """
        self.scaler.scale(loss).backward(retain_graph=retain_graph)
        norm = None
        if self.cfg.grad_clip:
            self.scaler.unscale_(optimizer)
            if modules is not None:
                params = [p for m in modules for p in m.parameters() if p.grad is not None]
            else:
                params = [
                    p for g in optimizer.param_groups for p in g["params"] if p.grad is not None
                ]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).detach()
        self.scaler.step(optimizer)
        self._stepped = True
        optimizer.zero_grad(set_to_none=True)
        return norm

    def _finish_step(self) -> None:
        """Update the loss scale once per iteration, after all optimizers stepped."""
        if self._stepped and self.scaler.is_enabled():
            self.scaler.update()
        self._stepped = False


class _Meter:
    """Running sums of step outputs; tensors stay on device until :meth:`mean`."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.count = 0

    def add(self, values: Mapping[str, float | torch.Tensor]) -> None:
        for k, v in values.items():
            if v is None:  # e.g. no gradient norm without clipping
                continue
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def mean(self) -> dict[str, float]:
        return {k: float(v) / max(1, self.count) for k, v in self.sums.items()}

    def state(self) -> dict[str, Any]:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count}

    def load(self, state: Mapping[str, Any] | None) -> None:
        self.sums = dict((state or {}).get("sums", {}))
        self.count = int((state or {}).get("count", 0))
