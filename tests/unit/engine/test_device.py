"""Device helpers, compile fallback, the step context and single-process distributed helpers."""

from __future__ import annotations

import contextlib
import logging
import math

import pytest
import torch

from volseg.config import TrainConfig
from volseg.engine.device import (
    CompileFallback,
    amp_dtype,
    maybe_compile,
    select_device,
    training_memory_format,
    unwrap,
)
from volseg.engine.distributed import (
    all_reduce_mean,
    broadcast_object,
    dist_info,
    init_distributed,
    wrap_ddp,
)
from volseg.engine.step import StepContext


def test_cpu_device_runs_in_fp32() -> None:
    cpu = torch.device("cpu")
    assert select_device("cpu") == cpu
    assert amp_dtype(cpu, True) is None
    ctx = StepContext(cpu, dist_info(), TrainConfig(), torch.amp.GradScaler("cpu", enabled=False))
    assert isinstance(ctx.autocast(), contextlib.nullcontext)
    with ctx.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    moved = ctx.to_device({"a": [torch.zeros(1), (torch.ones(1), "x")]})
    assert moved["a"][1][1] == "x" and isinstance(moved["a"][1], tuple)


def test_channels_last_is_cuda_only() -> None:
    assert training_memory_format(torch.device("cuda"), True) is torch.channels_last_3d
    assert training_memory_format(torch.device("cuda"), False) is None
    assert training_memory_format(torch.device("cpu"), True) is None


def test_channels_last_converts_five_d_batches_only() -> None:
    cfg = TrainConfig(channels_last=True)
    cpu = torch.device("cpu")
    ctx = StepContext(cpu, dist_info(), cfg, torch.amp.GradScaler("cpu", enabled=False))
    volume = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 3, 4, 5, 6)
    assert ctx.to_device(volume).is_contiguous()  # a no-op on CPU
    ctx.memory_format = torch.channels_last_3d  # what a CUDA context holds
    moved = ctx.to_device({"image": volume, "ids": torch.arange(3)})
    assert moved["image"].is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(moved["image"], volume)
    assert moved["ids"].is_contiguous()


def test_backward_step_clips_steps_and_zeroes() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=1.0)
    cfg = TrainConfig(grad_clip=0.5)
    ctx = StepContext(
        torch.device("cpu"), dist_info(), cfg, torch.amp.GradScaler("cpu", enabled=False)
    )
    norm = ctx.backward_step((10.0 * w).sum(), opt)
    assert float(norm) == pytest.approx(20.0)  # |grad| = 10 * sqrt(4) before clipping
    assert float(w.detach().norm()) == pytest.approx(0.5)  # one SGD step of the clipped grad
    assert w.grad is None
    ctx._finish_step()


def test_compile_failure_falls_back_to_eager_once(caplog: pytest.LogCaptureFixture) -> None:
    net = torch.nn.Linear(3, 2)
    calls = []

    def broken_compile(module: torch.nn.Module):
        def run(*args: object) -> None:
            calls.append(1)
            raise RuntimeError("backend exploded")

        return run

    wrapped = maybe_compile(net, True, compile_fn=broken_compile)
    assert isinstance(wrapped, CompileFallback) and unwrap(wrapped) is net
    x = torch.randn(5, 3)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(wrapped(x), net(x))
        assert torch.equal(wrapped(x), net(x))
    assert len(calls) == 1 and wrapped.failed
    assert sum("torch.compile failed" in r.message for r in caplog.records) == 1
    assert list(wrapped.state_dict()) == ["eager.weight", "eager.bias"]
    assert maybe_compile(net, False) is net


def test_single_process_distributed_helpers_are_identity() -> None:
    info = init_distributed()
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    net = torch.nn.Linear(1, 1)
    assert wrap_ddp(net, torch.device("cpu")) is net
    out = all_reduce_mean({"b": torch.tensor(2.0), "a": 1}, weight=5)
    assert out == {"a": 1.0, "b": 2.0} and all(isinstance(v, float) for v in out.values())
    assert broadcast_object({"x": math.pi}) == {"x": math.pi}


def test_loss_scaling_path_unscales_before_clipping_and_skips_overflow() -> None:
    """The fp16 path (GradScaler enabled), exercised with a CPU scaler."""
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    ctx = StepContext(torch.device("cpu"), dist_info(), TrainConfig(grad_clip=0.5), scaler)
    norm = ctx.backward_step((10.0 * w).sum(), opt)
    ctx._finish_step()
    assert float(norm) == pytest.approx(20.0)  # measured on unscaled gradients
    assert float(w.detach().norm()) == pytest.approx(0.5)
    before = w.detach().clone()
    ctx.backward_step((w * float("inf")).sum(), opt)
    ctx._finish_step()
    assert torch.equal(w.detach(), before)  # overflow: the step is skipped ...
    assert scaler.get_scale() == pytest.approx(512.0)  # ... and the scale backs off once


def test_inference_precision_on_cpu() -> None:
    """``auto`` and ``fp32`` leave a CPU in float32; ``bf16`` autocasts it; anything else
    is refused by name."""
    from volseg.engine.device import autocast_for

    cpu = torch.device("cpu")
    for precision in ("auto", "fp32"):
        with autocast_for(cpu, precision):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast_for(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        autocast_for(cpu, "fp16")
