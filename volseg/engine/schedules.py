"""Learning-rate schedules: per-iteration warm-up + cosine, or ReduceLROnPlateau on validation.

The trainer steps every scheduler that is not a ``ReduceLROnPlateau`` once per iteration, and
steps plateau schedulers with a validation metric.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from volseg.config import TrainConfig

ScheduleKind = Literal["cosine", "constant", "plateau"]


class WarmupCosine:
    """LR factor at iteration ``step``: linear warm-up to 1, then cosine down to ``min_factor``.

    ``factor(s) = (s + 1) / W`` for ``s < W``; afterwards
    ``min + (1 - min) * (1 + cos(pi * (s - W) / (T - W))) / 2``. A plain class (not a
    closure) so ``LambdaLR.state_dict`` records its settings.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor must be in [0, 1], got {min_factor}")
        self.warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
        self.total_steps = int(total_steps)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> LambdaLR:
    """Per-iteration ``LambdaLR`` applying :class:`WarmupCosine` to every parameter group."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_factor))


def build_scheduler(
    optimizer: Optimizer,
    cfg: TrainConfig,
    kind: ScheduleKind = "cosine",
    *,
    min_factor: float = 0.0,
    plateau_mode: Literal["min", "max"] = "max",
    plateau_factor: float = 0.5,
    plateau_patience: int = 2,
) -> LRScheduler | ReduceLROnPlateau:
    """The schedule a stage asked for, sized from ``cfg`` (epochs x iters_per_epoch).

    ``cosine``: warm-up over ``cfg.warmup_epochs`` epochs, then cosine to ``min_factor``.
    ``constant``: warm-up then flat. ``plateau``: halve the LR when the validation metric
    stops improving (``plateau_mode`` says whether higher is better).
    """
    total = cfg.epochs * cfg.iters_per_epoch
    warmup = cfg.warmup_epochs * cfg.iters_per_epoch
    if kind == "cosine":
        return warmup_cosine(optimizer, warmup, total, min_factor)
    if kind == "constant":
        return warmup_cosine(optimizer, warmup, total, 1.0)
    if kind == "plateau":
        return ReduceLROnPlateau(
            optimizer, mode=plateau_mode, factor=plateau_factor, patience=plateau_patience
        )
    raise ValueError(f"unknown schedule {kind!r} (expected cosine, constant or plateau)")


def is_plateau(scheduler: Any) -> bool:
    """True for schedulers stepped on a validation metric rather than per iteration."""
    return isinstance(scheduler, ReduceLROnPlateau)
