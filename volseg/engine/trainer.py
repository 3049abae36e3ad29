"""The training loop shared by the GAN, pretraining and fine-tuning stages.

A fixed number of steps per epoch, per-iteration LR schedules, validation every few epochs
with best/last checkpoints, mid-epoch checkpoints for crash safety, exact resume, AMP and
DDP. The stage supplies ``step_fn`` (forward, backward, optimizer steps) and the data; the
trainer owns the loop, the bookkeeping and the files in ``<run_dir>/<stage>/``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from volseg.config import TrainConfig
from volseg.engine import checkpoint as ckpt_io
from volseg.engine.device import (
    amp_dtype,
    maybe_compile,
    seed_everything,
    select_device,
)
from volseg.engine.distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    broadcast_object,
    init_distributed,
    wrap_ddp,
)
from volseg.engine.metrics_log import METRICS_FILE, TB_DIR, MetricsLogger, truncate_metrics
from volseg.engine.schedules import is_plateau
from volseg.engine.state import TrainState
from volseg.engine.step import StepContext, TrainingDiverged, _Meter
from volseg.engine.step_data import StepSampler, derive_seed
from volseg.errors import InputError
from volseg.progress import progress

log = logging.getLogger(__name__)

StepFn = Callable[[Any, TrainState, "StepContext"], Mapping[str, float | torch.Tensor]]
ValFn = Callable[[TrainState], Mapping[str, float]]
LoaderFactory = Callable[[StepSampler], Iterable[Any]]

WEIGHT_KEY = "_weight"
"""Key a ``val_fn`` may return (with ``val_mode="all"``) to weight its rank's metrics."""


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did and where its checkpoints are."""

    stage_dir: Path
    last: Path
    best: Path | None
    global_step: int
    total_steps: int
    best_metric: float | None
    best_epoch: int | None
    ran_steps: int
    last_val: dict[str, float] = field(default_factory=dict)
    best_metric_name: str | None = None
    """The validation metric that chose ``best``."""


class Trainer:
    """Runs ``cfg.epochs`` x ``cfg.iters_per_epoch`` steps of ``step_fn``; resumable.

    ``step_fn(batch, state, ctx)`` does one iteration (forward in ``ctx.autocast()``,
    ``ctx.backward_step`` per optimizer) and returns losses (floats or 0-d tensors).
    ``loader_factory(sampler)`` returns an iterable of batches following the sampler,
    normally :func:`~volseg.engine.step_data.make_loader`. ``val_fn(state)`` returns
    metrics; with ``val_mode="main"`` it runs on rank 0 only (use ``state.raw(name)``, not
    the DDP wrapper) and its result is broadcast; with ``"all"`` every rank evaluates its
    share and the means are reduced (weighted by an optional ``"_weight"`` entry).
    ``best_metric``/``best_mode`` pick ``checkpoint_best.pt``; ``ReduceLROnPlateau``
    schedulers step on ``plateau_metric`` (default ``best_metric``). ``config`` is the full
    resolved config saved in checkpoints (default: ``cfg``).
    """

    def __init__(
        self,
        state: TrainState,
        step_fn: StepFn,
        loader_factory: LoaderFactory,
        cfg: TrainConfig,
        run_dir: str | Path,
        stage: str,
        val_fn: ValFn | None = None,
        seed: int = 0,
        *,
        best_metric: str | None = None,
        best_mode: Literal["max", "min"] = "max",
        plateau_metric: str | None = None,
        val_mode: Literal["main", "all"] = "main",
        config: Mapping[str, Any] | None = None,
        device: torch.device | None = None,
        ddp_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if val_mode not in ("main", "all"):
            raise ValueError(f"val_mode must be 'main' or 'all', got {val_mode!r}")
        self.state = state
        self.step_fn = step_fn
        self.loader_factory = loader_factory
        self.cfg = cfg
        self.stage = stage
        self.stage_dir = Path(run_dir) / stage
        self.val_fn = val_fn
        self.seed = int(seed)
        self.best_metric_name = best_metric
        self.best_mode = best_mode
        self.plateau_metric = plateau_metric or best_metric
        self.val_mode = val_mode
        # JSON round trip: checkpoints must load with weights_only (no Path objects etc.).
        raw_config = config if config is not None else cfg.model_dump(mode="json")
        self.config = json.loads(json.dumps(dict(raw_config), default=str))
        self.dist = init_distributed()
        self.device = device or select_device()
        self.total_steps = cfg.epochs * cfg.iters_per_epoch
        self.checkpoint_every = cfg.checkpoint_every or max(1, math.ceil(cfg.iters_per_epoch / 4))
        if state.scaler is None:
            fp16 = amp_dtype(self.device, cfg.amp) == torch.float16
            state.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.ctx = StepContext(self.device, self.dist, cfg, state.scaler)
        for name, module in list(state.modules.items()):
            module.to(self.device)
            if self.ctx.memory_format is not None:
                module.to(memory_format=self.ctx.memory_format)
            state.modules[name] = maybe_compile(
                wrap_ddp(module, self.device, **dict(ddp_kwargs or {})), cfg.compile
            )
        self._epoch_meter = _Meter()
        self._log_meter = _Meter()
        self._logger: MetricsLogger | None = None
        self._last_val: dict[str, float] = {}
        self._t0 = 0.0
        self._elapsed0 = 0.0
        self._last_log = (0.0, 0)

    # ------------------------------------------------------------------ paths
    @property
    def last_path(self) -> Path:
        return self.stage_dir / ckpt_io.LAST

    @property
    def best_path(self) -> Path:
        return self.stage_dir / ckpt_io.BEST

    # ------------------------------------------------------------------ public
    def fit(self, resume: bool = True) -> FitResult:
        """Train to ``cfg.epochs``; continue from ``checkpoint_last.pt`` if ``resume``.

        With ``resume=False`` earlier checkpoints and logs of this stage are removed first.
        A finished run returns at once without touching anything.
        """
        barrier()
        if resume and self.last_path.is_file():
            self._resume()
        else:
            if self.state.global_step != 0:
                raise ValueError(
                    f"{self.stage}: a fresh run needs a new TrainState (this one is at step "
                    f"{self.state.global_step})"
                )
            if self.dist.is_main:
                self._clear_outputs()
            seed_everything(
                derive_seed(self.seed, self.dist.rank), deterministic=self.device.type == "cpu"
            )
        barrier()
        start = self.state.global_step
        if start >= self.total_steps:
            log.info("%s: already finished (%d steps); nothing to do", self.stage, start)
            return self._result(ran_steps=0)
        log.info(
            "%s: %s at step %d of %d (%d epochs x %d steps, batch %d x %d ranks) on %s",
            self.stage,
            "resuming" if start else "starting",
            start,
            self.total_steps,
            self.cfg.epochs,
            self.cfg.iters_per_epoch,
            self.cfg.batch_size,
            self.dist.world_size,
            self.device,
        )
        self._logger = MetricsLogger(self.stage_dir, self.dist.is_main, purge_step=start + 1)
        try:
            self._loop(start)
        finally:
            self._logger.close()
        barrier()
        return self._result(ran_steps=self.state.global_step - start)

    # ------------------------------------------------------------------ loop
    def _loop(self, start: int) -> None:
        sampler = StepSampler(
            start, self.total_steps, self.cfg.batch_size, self.dist.rank, self.dist.world_size
        )
        loader = self.loader_factory(sampler)
        for module in self.state.modules.values():
            module.train()
        self._t0 = time.perf_counter()
        self._elapsed0 = self.state.elapsed_s
        self._last_log = (self._t0, start)
        bar = progress(loader, total=self.total_steps, initial=start, desc=self.stage, unit="it")
        try:
            self._run_steps(bar, start)
        finally:
            if hasattr(bar, "close"):
                bar.close()
        if self.state.global_step < self.total_steps:
            raise RuntimeError(
                f"{self.stage}: the data loader ended at step {self.state.global_step} of "
                f"{self.total_steps}; it must yield one batch per sampler step"
            )

    def _run_steps(self, bar: Iterable[Any], start: int) -> None:
        ipe = self.cfg.iters_per_epoch
        for batch in _take(bar, self.total_steps - start):
            step = self.state.global_step
            self.state.epoch = step // ipe
            self.ctx.epoch, self.ctx.global_step = self.state.epoch, step
            lrs = self._current_lrs()
            out = self.step_fn(batch, self.state, self.ctx)
            self.ctx._finish_step()
            for sched in self.state.schedulers.values():
                if not is_plateau(sched):
                    sched.step()
            self.state.global_step = step + 1
            self.state.elapsed_s = self._elapsed0 + time.perf_counter() - self._t0
            self._epoch_meter.add(out)
            self._log_meter.add(out)
            done = self.state.global_step
            if done % self.cfg.log_every == 0 or done % ipe == 0:
                self._log_train(lrs, bar)
            if done % ipe == 0:
                self._end_epoch()
            elif done % self.checkpoint_every == 0:
                self._save(best=False)

    def _current_lrs(self) -> dict[str, float]:
        opts = self.state.optimizers
        if len(opts) == 1:
            return {"lr": next(iter(opts.values())).param_groups[0]["lr"]}
        return {f"lr_{n}": o.param_groups[0]["lr"] for n, o in opts.items()}

    def _log_train(self, lrs: dict[str, float], bar: Any) -> None:
        means = self._log_meter.mean()
        self._log_meter = _Meter()
        now, step = time.perf_counter(), self.state.global_step
        then, step0 = self._last_log
        self._last_log = (now, step)
        samples = (step - step0) * self.cfg.batch_size * self.dist.world_size
        rate = samples / (now - then) if now > then else float("nan")
        assert self._logger is not None
        self._logger.log(
            {
                "type": "train",
                "epoch": self.state.global_step / self.cfg.iters_per_epoch,
                "step": self.state.global_step,
                "time": round(self.state.elapsed_s, 3),
                "samples_per_s": round(rate, 3),
                **lrs,
                **means,
            }
        )
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)

    def _end_epoch(self) -> None:
        epoch = self.state.global_step // self.cfg.iters_per_epoch  # epochs completed
        self.state.epoch = epoch
        train = all_reduce_mean(self._epoch_meter.mean())
        self._epoch_meter = _Meter()
        summary = f"{self.stage} epoch {epoch}/{self.cfg.epochs}: " + _fmt(train)
        improved = False
        if self.val_fn is not None and (
            epoch % self.cfg.val_every == 0 or epoch == self.cfg.epochs
        ):
            metrics = self._validate()
            self._last_val = metrics
            improved = self._update_best(metrics, epoch)
            self._step_plateau(metrics)
            assert self._logger is not None
            self._logger.log(
                {
                    "type": "val",
                    "epoch": epoch,
                    "step": self.state.global_step,
                    "time": round(self.state.elapsed_s, 3),
                    **metrics,
                    "best": improved,
                }
            )
            summary += " | val " + _fmt(metrics) + (" (best)" if improved else "")
        log.info("%s (%.1f s)", summary, self.state.elapsed_s)
        self._save(best=improved)

    def _validate(self) -> dict[str, float]:
        assert self.val_fn is not None
        for module in self.state.modules.values():
            module.eval()
        try:
            with torch.no_grad():
                if self.val_mode == "all":
                    raw = dict(self.val_fn(self.state))
                    weight = float(raw.pop(WEIGHT_KEY, 1.0))
                    metrics = all_reduce_mean(raw, weight)
                else:
                    mine = None
                    if self.dist.is_main:
                        mine = {k: float(v) for k, v in self.val_fn(self.state).items()}
                        mine.pop(WEIGHT_KEY, None)
                    metrics = broadcast_object(mine)
        finally:
            for module in self.state.modules.values():
                module.train()
        return metrics

    def _update_best(self, metrics: Mapping[str, float], epoch: int) -> bool:
        name = self.best_metric_name
        if name is None:
            return False
        if name not in metrics:
            raise KeyError(
                f"{self.stage}: val_fn returned no '{name}' (got {sorted(metrics)}) to track"
            )
        value = float(metrics[name])
        best = self.state.best_metric
        if math.isnan(value):
            return False
        better = best is None or (value > best if self.best_mode == "max" else value < best)
        if better:
            self.state.best_metric, self.state.best_epoch = value, epoch
        return better

    def _step_plateau(self, metrics: Mapping[str, float]) -> None:
        for sched in self.state.schedulers.values():
            if is_plateau(sched):
                if self.plateau_metric not in metrics:
                    raise KeyError(
                        f"{self.stage}: ReduceLROnPlateau needs val metric "
                        f"'{self.plateau_metric}' (got {sorted(metrics)})"
                    )
                sched.step(metrics[self.plateau_metric])

    # ------------------------------------------------------------------ checkpoints
    def _payload(self) -> dict[str, Any]:
        payload = self.state.state_dict()
        payload.update(
            format=ckpt_io.FORMAT,
            version=ckpt_io.VERSION,
            stage=self.stage,
            torch_version=str(torch.__version__),
            world_size=self.dist.world_size,
            total_steps=self.total_steps,
            metric_name=self.best_metric_name,
            rng=all_gather_object(ckpt_io.capture_rng_state()),
            meters={"epoch": self._epoch_meter.state(), "log": self._log_meter.state()},
            last_val=self._last_val,
            config=self.config,
            train_config=self.cfg.model_dump(mode="json"),
        )
        return payload

    def _save(self, best: bool) -> None:
        """Write ``checkpoint_last.pt`` (and ``checkpoint_best.pt``) on rank 0."""
        if not self.state.weights_finite():
            raise TrainingDiverged(
                f"{self.stage}: weights are NaN/inf at step {self.state.global_step}; "
                f"keeping {self.last_path} from before (lower the lr or enable grad_clip)"
            )
        payload = self._payload()  # collective: every rank gathers RNG states
        if not self.dist.is_main:
            return
        ckpt_io.save_checkpoint(self.last_path, payload)
        if best:
            ckpt_io.save_checkpoint(self.best_path, payload)

    def _resume(self) -> None:
        path = self.last_path
        ckpt = ckpt_io.load_checkpoint(path)
        if ckpt.get("stage") != self.stage:
            raise InputError(f"{path}: checkpoint of stage '{ckpt.get('stage')}', not {self.stage}")
        try:
            self.state.load_state_dict(ckpt)
        except (ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).splitlines()[0][:300]
            raise InputError(
                f"{path}: does not match this run ({first}); start fresh instead of resuming"
            ) from exc
        changed = _changed_keys(ckpt.get("train_config", {}), self.cfg.model_dump(mode="json"))
        if changed:
            log.warning("%s: resuming with changed settings: %s", self.stage, ", ".join(changed))
        meters = ckpt.get("meters", {})
        self._epoch_meter.load(meters.get("epoch"))
        self._log_meter.load(meters.get("log"))
        self._last_val = dict(ckpt.get("last_val") or {})
        rng = ckpt.get("rng") or []
        if len(rng) == self.dist.world_size:
            ckpt_io.restore_rng_state(rng[self.dist.rank])
        else:
            log.warning(
                "%s: checkpoint from %d ranks, running on %d: data and RNG streams differ",
                self.stage,
                len(rng),
                self.dist.world_size,
            )
            seed_everything(derive_seed(self.seed, self.dist.rank, self.state.global_step))
        if self.dist.is_main and self.state.global_step < self.total_steps:
            truncate_metrics(self.stage_dir / METRICS_FILE, self.state.global_step)

    def _clear_outputs(self) -> None:
        for name in (ckpt_io.LAST, ckpt_io.BEST, METRICS_FILE):
            (self.stage_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.stage_dir / TB_DIR, ignore_errors=True)

    def _result(self, ran_steps: int) -> FitResult:
        return FitResult(
            stage_dir=self.stage_dir,
            last=self.last_path,
            best=self.best_path if self.best_path.is_file() else None,
            global_step=self.state.global_step,
            total_steps=self.total_steps,
            best_metric=self.state.best_metric,
            best_epoch=self.state.best_epoch,
            ran_steps=ran_steps,
            last_val=dict(self._last_val),
            best_metric_name=self.best_metric_name,
        )


def _take(iterable: Iterable[Any], n: int) -> Iterator[Any]:
    """At most ``n`` items (guards against loaders longer than the sampler)."""
    if n <= 0:
        return
    for i, item in enumerate(iterable, start=1):
        yield item
        if i >= n:
            return


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
