"""Everything a training run must carry across a restart, in one object."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from volseg.engine.device import unwrap


@dataclass
class TrainState:
    """Modules, optimizers, schedulers, AMP scaler and counters of one training stage.

    ``modules`` maps names to networks; after the :class:`~volseg.engine.trainer.Trainer` is
    built they hold the *runnable* form (DDP / compiled) to call in ``step_fn``; use
    :meth:`raw` for the plain module (checkpoints, validation on one rank, export).
    ``model_args`` holds each module's constructor keyword arguments so a checkpoint can
    rebuild it. ``extra`` is stage-defined plain data saved with the checkpoint.
    """

    modules: dict[str, nn.Module]
    optimizers: dict[str, Optimizer] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    scaler: torch.amp.GradScaler | None = None
    model_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    elapsed_s: float = 0.0

    def raw(self, name: str) -> nn.Module:
        """Module ``name`` without DDP / compile wrappers."""
        return unwrap(self.modules[name])

    def raw_parameters(self) -> Iterator[torch.Tensor]:
        for name in self.modules:
            yield from self.raw(name).parameters()

    def weights_finite(self) -> bool:
        """True if no parameter holds a NaN or infinity."""
        return all(bool(torch.isfinite(p).all()) for p in self.raw_parameters())

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer/scheduler/scaler states and counters (no RNG, no config)."""
        return {
            "modules": {n: self.raw(n).state_dict() for n in self.modules},
            "model_args": {n: dict(a) for n, a in self.model_args.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "extra": self.extra,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output; names must match (ValueError otherwise)."""
        for key, mine in (
            ("modules", self.modules),
            ("optimizers", self.optimizers),
            ("schedulers", self.schedulers),
        ):
            theirs = ckpt.get(key, {})
            if set(theirs) != set(mine):
                raise ValueError(
                    f"{key} differ: checkpoint has {sorted(theirs)}, run has {sorted(mine)}"
                )
        for n in self.modules:
            self.raw(n).load_state_dict(ckpt["modules"][n])
        for n, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][n])
        for n, sched in self.schedulers.items():
            sched.load_state_dict(ckpt["schedulers"][n])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.extra = dict(ckpt.get("extra") or {})
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        best = ckpt.get("best_metric")
        self.best_metric = None if best is None else float(best)
        best_epoch = ckpt.get("best_epoch")
        self.best_epoch = None if best_epoch is None else int(best_epoch)
        self.elapsed_s = float(ckpt.get("elapsed_s", 0.0))
