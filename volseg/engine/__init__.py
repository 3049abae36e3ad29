"""One training engine for the GAN, Barlow Twins and fine-tuning stages.

What it gives a stage: a loop of ``cfg.epochs`` x ``cfg.iters_per_epoch`` steps with AMP,
gradient clipping, per-iteration LR schedules, validation with best/last checkpoints,
crash-safe mid-epoch checkpoints, exact resume, DDP under ``torchrun`` and logs
(``<run_dir>/<stage>/metrics.jsonl``, TensorBoard in ``<run_dir>/<stage>/tb``, a progress
bar, ``logging`` epoch summaries).

How a stage uses it::

    from volseg.engine import (StepDataset, TrainState, Trainer, build_scheduler,
                               init_distributed, make_loader, select_device, seed_everything)

    class Patches(StepDataset):                 # batch = f(seed, global sample index)
        def sample(self, index, rng):           # all randomness from rng
            ...

    dist = init_distributed()                   # no-op outside torchrun
    device = select_device()
    seed_everything(cfg.seed)                   # same initial weights on every rank
    net = build_model(**net_args).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.finetune.lr)
    state = TrainState(modules={"net": net}, optimizers={"net": opt},
                       schedulers={"net": build_scheduler(opt, cfg.finetune)},
                       model_args={"net": net_args})

    def step_fn(batch, state, ctx):             # one iteration; returns losses
        batch = ctx.to_device(batch)
        with ctx.autocast():
            loss = loss_fn(state.modules["net"](batch["image"]), batch["label"])
        ctx.backward_step(loss, state.optimizers["net"])
        return {"loss": loss.detach()}          # tensors are fine: no sync per step

    def val_fn(state):                          # rank 0, plain module, no_grad, eval mode
        return {"dice": evaluate(state.raw("net"))}

    trainer = Trainer(state, step_fn, lambda s: make_loader(Patches(cfg.seed), s, workers),
                      cfg.finetune, cfg.run_dir, "finetune", val_fn, seed=cfg.seed,
                      best_metric="dice", config=cfg.model_dump(mode="json"))
    result = trainer.fit(resume=True)           # re-running continues; finished -> no-op

Exact resume rests on three rules: data are step-indexed (:class:`StepSampler` gives rank
``r`` of ``W`` at step ``s`` the sample indices ``(s*W + r)*B + k``, and
:class:`StepDataset` seeds its generator from ``(seed, index)``); checkpoints hold all
state including every rank's RNG (:mod:`volseg.engine.checkpoint`); the loader never
draws from the global RNG (:func:`make_loader`). On CPU a resumed run ends with weights
bit-identical to an uninterrupted one.

Several optimizers (GAN): call ``ctx.backward_step`` once per optimizer; the fp16 loss
scale is updated once per iteration by the trainer. ``ReduceLROnPlateau`` schedulers are
stepped on the validation metric ``plateau_metric``; all others once per iteration.
Checkpoints rebuild models: :func:`load_model_weights` returns ``(state_dict, kwargs)``.
"""

from __future__ import annotations

from volseg.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
    save_checkpoint,
)
from volseg.engine.device import (
    amp_dtype,
    maybe_compile,
    seed_everything,
    select_device,
    training_memory_format,
    unwrap,
)
from volseg.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    dist_info,
    init_distributed,
    is_main_process,
    wrap_ddp,
)
from volseg.engine.metrics_log import MetricsLogger, read_metrics
from volseg.engine.schedules import WarmupCosine, build_scheduler, is_plateau, warmup_cosine
from volseg.engine.state import TrainState
from volseg.engine.step import StepContext, TrainingDiverged
from volseg.engine.step_data import StepDataset, StepSampler, derive_seed, make_loader
from volseg.engine.trainer import FitResult, Trainer

__all__ = [
    "DistInfo",
    "FitResult",
    "MetricsLogger",
    "StepContext",
    "StepDataset",
    "StepSampler",
    "TrainState",
    "Trainer",
    "TrainingDiverged",
    "WarmupCosine",
    "all_reduce_mean",
    "amp_dtype",
    "barrier",
    "broadcast_object",
    "build_scheduler",
    "capture_rng_state",
    "cleanup_distributed",
    "derive_seed",
    "dist_info",
    "init_distributed",
    "is_main_process",
    "is_plateau",
    "load_checkpoint",
    "load_model_weights",
    "make_loader",
    "maybe_compile",
    "training_memory_format",
    "read_metrics",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "unwrap",
    "warmup_cosine",
    "wrap_ddp",
]
