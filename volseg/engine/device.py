"""Device choice, seeding, mixed precision and optional ``torch.compile`` with eager fallback."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def select_device(prefer: str | None = None) -> torch.device:
    """CUDA if present (``cuda:LOCAL_RANK`` under torchrun), else CPU.

    ``prefer="cpu"`` forces the CPU. On CUDA the current device is set and cuDNN autotuning
    (``cudnn.benchmark``) is switched on, since training patch shapes are fixed.
    """
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs.

    ``deterministic`` also asks torch for deterministic kernels (warn-only) without filling
    fresh memory with NaNs; it is cheap on CPU, so the trainer turns it on there only.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA when supported, else fp16; None (fp32) on CPU or if off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


PRECISIONS = ("auto", "fp32", "bf16")
"""Inference precision: ``auto`` autocasts on CUDA (:func:`amp_dtype`) and runs fp32 on a
CPU; ``fp32`` never autocasts (exact, slowest on a GPU); ``bf16`` autocasts to bfloat16 on
any device, the CPU included (about twice as fast as fp32 on CPUs with AVX512-BF16 or AMX,
slower on CPUs without)."""


def autocast_for(
    device: torch.device, precision: str = "auto"
) -> contextlib.AbstractContextManager:
    """Autocast context for inference on ``device`` at ``precision`` (:data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = {"auto": amp_dtype(device), "fp32": None, "bf16": torch.bfloat16}[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class CompileFallback(nn.Module):
    """Runs a compiled module and falls back to eager for good if compiling it fails.

    ``torch.compile`` is lazy: errors surface on the first call (and on new shapes), so the
    fallback is decided at call time, logged once.
    """

    def __init__(self, eager: nn.Module, compiled: Callable[..., Any]) -> None:
        super().__init__()
        self.eager = eager
        object.__setattr__(self, "_compiled", compiled)  # not a registered submodule
        self.failed = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # compile backends raise many types
                self.failed = True
                log.warning(
                    "torch.compile failed for %s (%s: %s); running eager",
                    type(unwrap(self.eager)).__name__,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                )
        return self.eager(*args, **kwargs)


def maybe_compile(
    module: nn.Module,
    enabled: bool,
    compile_fn: Callable[[nn.Module], Callable[..., Any]] | None = None,
) -> nn.Module:
    """``torch.compile`` the module behind an eager fallback when ``enabled``."""
    if not enabled:
        return module
    fn = compile_fn or torch.compile
    try:
        compiled = fn(module)
    except Exception as exc:
        log.warning("torch.compile unavailable (%s); running eager", exc)
        return module
    return CompileFallback(module, compiled)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under compile-fallback, ``torch.compile`` and DDP wrappers."""
    while True:
        if isinstance(module, CompileFallback):
            module = module.eager
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def training_memory_format(device: torch.device, channels_last: bool) -> torch.memory_format | None:
    """``channels_last_3d`` when asked for on CUDA; None (leave layouts alone) otherwise.

    Training on a CPU keeps the default layout, so CPU runs stay bit-identical whatever the
    config says (prediction on a CPU does use ``channels_last_3d``:
    :func:`inference_memory_format`).
    """
    return torch.channels_last_3d if channels_last and device.type == "cuda" else None


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """The layout a network predicts in on ``device``: ``channels_last_3d`` on a CPU, where
    oneDNN's 3D convolutions of the demo TransUNet3D run 1.4-1.6x faster in it (and no
    backbone measured slower; bench/README.md, 2026-12-07); contiguous elsewhere, as
    training on CUDA measured it neutral without ``compile``."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
