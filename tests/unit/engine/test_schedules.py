"""LR schedules: warm-up + cosine values, per-group scaling, plateau, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from volseg.config import TrainConfig
from volseg.engine.schedules import WarmupCosine, build_scheduler, is_plateau, warmup_cosine


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.25), (1, 0.5), (3, 1.0), (4, 1.0), (12, 0.5), (20, 0.0), (30, 0.0)],
)
def test_warmup_cosine_values(step: int, expected: float) -> None:
    # 4 warm-up steps, 20 in all: cosine over the 16 after warm-up, midpoint at step 12.
    assert WarmupCosine(4, 20)(step) == pytest.approx(expected, abs=1e-12)


def test_min_factor_and_no_warmup() -> None:
    f = WarmupCosine(0, 10, min_factor=0.1)
    assert f(0) == pytest.approx(1.0)
    assert f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        WarmupCosine(2, 0)
    with pytest.raises(ValueError):
        WarmupCosine(2, 10, min_factor=1.5)


def _optimizer() -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}], lr=1.0)


def test_build_scheduler_from_config_scales_every_group() -> None:
    cfg = TrainConfig(epochs=3, iters_per_epoch=4, warmup_epochs=1, lr=1.0)
    opt = _optimizer()
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.25, 0.125])  # warm-up over 4 steps
    assert seen[3] == pytest.approx([1.0, 0.5])
    assert seen[8] == pytest.approx([0.5, 0.25])  # halfway through the 8 cosine steps
    assert seen[11][0] < 0.05


def test_constant_and_plateau_kinds() -> None:
    cfg = TrainConfig(epochs=2, iters_per_epoch=3, warmup_epochs=0)
    opt = _optimizer()
    const = build_scheduler(opt, cfg, "constant")
    assert not is_plateau(const)
    for _ in range(5):
        opt.step()
        const.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    plateau = build_scheduler(_optimizer(), cfg, "plateau")
    assert isinstance(plateau, ReduceLROnPlateau) and is_plateau(plateau)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(_optimizer(), cfg, "linear")  # type: ignore[arg-type]


def test_state_dict_round_trip_restores_position_and_settings() -> None:
    opt = _optimizer()
    sched = warmup_cosine(opt, 2, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = _optimizer()
    other = warmup_cosine(opt2, 0, 99)
    other.load_state_dict(state)
    assert other.lr_lambdas[0].total_steps == 10  # type: ignore[attr-defined]
    assert other.get_last_lr() == sched.get_last_lr()
