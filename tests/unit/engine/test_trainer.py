"""The Trainer in one process on CPU: files and logs, resume, fresh restart, plateau, guards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.integration.test_resume import STAGE, build_trainer, toy_config
from volseg.engine import Trainer, TrainingDiverged, TrainState, load_checkpoint, read_metrics

CFG = dict(epochs=2, iters_per_epoch=3, checkpoint_every=2, log_every=2)


@pytest.fixture(autouse=True)
def _restore_determinism_flag() -> Iterator[None]:
    """The trainer turns on deterministic kernels on CPU; keep that out of other tests."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["modules"]["net"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_writes_checkpoints_and_logs_then_rerun_is_a_no_op(tmp_path: Path) -> None:
    result = build_trainer(tmp_path, toy_config(**CFG)).fit()
    stage = tmp_path / STAGE
    assert result.ran_steps == 6 and result.global_step == result.total_steps == 6
    assert (
        result.last == stage / "checkpoint_last.pt" and result.best == stage / "checkpoint_best.pt"
    )
    records = read_metrics(stage / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train] == [2, 3, 4, 6]  # every 2 steps and at epoch ends
    assert {"epoch", "step", "lr", "loss", "grad_norm", "time"} <= train[0].keys()
    val = [r for r in records if r["type"] == "val"]
    assert [(r["epoch"], r["step"]) for r in val] == [(1, 3), (2, 6)]
    assert result.best_metric == min(r["mse"] for r in val)
    assert val[0]["best"] is True
    assert any((stage / "tb").iterdir())
    ckpt = load_checkpoint(result.last)
    assert ckpt["stage"] == STAGE and ckpt["model_args"] == {"net": {"width": 4}}
    assert ckpt["train_config"]["iters_per_epoch"] == 3 and ckpt["epoch"] == 2

    again = build_trainer(tmp_path, toy_config(**CFG)).fit(resume=True)
    assert again.ran_steps == 0 and again.best_metric == result.best_metric
    assert read_metrics(stage / "metrics.jsonl") == records


def test_interrupted_run_resumes_exactly_and_fresh_start_replaces(tmp_path: Path) -> None:
    ref = build_trainer(tmp_path / "ref", toy_config(**CFG)).fit()
    with pytest.raises(KeyboardInterrupt):
        build_trainer(tmp_path / "b", toy_config(**CFG), raise_at=5).fit()
    assert load_checkpoint(tmp_path / "b" / STAGE / "checkpoint_last.pt")["global_step"] == 4
    resumed = build_trainer(tmp_path / "b", toy_config(**CFG)).fit()
    assert resumed.ran_steps == 2
    assert _same(_weights(ref.last), _weights(resumed.last))
    steps = [r["step"] for r in read_metrics(resumed.stage_dir / "metrics.jsonl")]
    assert steps == [2, 3, 3, 4, 6, 6]  # train/val lines once each, nothing duplicated

    fresh = build_trainer(tmp_path / "b", toy_config(**CFG)).fit(resume=False)
    assert fresh.ran_steps == 6
    assert _same(_weights(ref.last), _weights(fresh.last))  # seeded: same run again


def test_plateau_scheduler_steps_on_validation_only(tmp_path: Path) -> None:
    cfg = toy_config(**{**CFG, "epochs": 3})
    trainer = build_trainer(tmp_path, cfg, schedule="plateau", val_fn=lambda s: {"mse": 1.0})
    trainer.fit()
    lrs = [r["lr"] for r in read_metrics(trainer.stage_dir / "metrics.jsonl") if "lr" in r]
    lr = cfg.lr
    # Flat within epochs; no improvement at epochs 2 and 3 (patience 0) halves it each time.
    assert lrs == pytest.approx([lr, lr, lr, lr, lr / 2, lr / 2])
    assert trainer.state.optimizers["net"].param_groups[0]["lr"] == pytest.approx(lr / 4)


def test_missing_best_metric_is_named(tmp_path: Path) -> None:
    trainer = build_trainer(tmp_path, toy_config(**CFG), val_fn=lambda s: {"dice": 0.5})
    with pytest.raises(KeyError, match="'mse'.*dice"):
        trainer.fit()


def _tiny_state() -> TrainState:
    net = torch.nn.Linear(2, 1)
    return TrainState({"net": net}, {"net": torch.optim.SGD(net.parameters(), lr=0.1)})


def test_nan_weights_are_never_checkpointed(tmp_path: Path) -> None:
    def poison(batch: object, state: TrainState, ctx: object) -> dict:
        with torch.no_grad():
            state.raw("net").weight.fill_(float("nan"))
        return {"loss": 0.0}

    cfg = toy_config(**CFG)
    trainer = Trainer(_tiny_state(), poison, lambda s: range(len(s)), cfg, tmp_path, "nan")
    with pytest.raises(TrainingDiverged, match="step 2"):
        trainer.fit()
    assert not (tmp_path / "nan" / "checkpoint_last.pt").exists()


def test_short_loader_is_an_error(tmp_path: Path) -> None:
    cfg = toy_config(**CFG)
    trainer = Trainer(_tiny_state(), lambda b, s, c: {}, lambda s: [0, 1], cfg, tmp_path, "short")
    with pytest.raises(RuntimeError, match="ended at step 2 of 6"):
        trainer.fit()


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    from volseg.errors import InputError

    build_trainer(tmp_path, toy_config(**CFG)).fit()
    net = torch.nn.Linear(2, 1)
    state = TrainState({"net": net}, {"net": torch.optim.SGD(net.parameters(), lr=0.1)})
    trainer = Trainer(
        state, lambda b, s, c: {}, lambda s: range(6), toy_config(**CFG), tmp_path, STAGE
    )
    with pytest.raises(InputError, match="checkpoint_last.pt: does not match this run"):
        trainer.fit()


def test_full_config_with_paths_is_stored_loadable(tmp_path: Path) -> None:
    cfg = toy_config(**CFG)
    trainer = Trainer(
        _tiny_state(), lambda b, s, c: {"loss": 1.0}, lambda s: range(len(s)), cfg, tmp_path,
        "cfg", config={"run_dir": tmp_path, "finetune": {"epochs": 2}},
    )  # fmt: skip
    result = trainer.fit()
    ckpt = load_checkpoint(result.last)
    assert ckpt["config"] == {"run_dir": str(tmp_path), "finetune": {"epochs": 2}}
    with pytest.raises(ValueError, match="new TrainState"):
        trainer.fit(resume=False)
