"""Fine-tuning training throughput: volseg's TransUNet3D vs MONAI UNet vs a PlainConvUNet.

One run, one device: for each network a full training step on random data (forward under
bf16 autocast on CUDA / fp32 on CPU, volseg's ``FinetuneLoss`` with Dice + sensitivity BCE +
probability MSE, backward, AdamW step) is warmed up, then timed ``--steps`` times (the
median is reported). FLOPs per step (forward + backward) are counted with
``FlopCounterMode`` on the ``meta`` device (``bench/model_costs.count_flops``); the achieved
TFLOP/s is compared with a matmul ceiling measured in the same run (bf16 on CUDA, fp32 on
CPU). Prints a markdown table, then TransUNet3D / PlainConvUNet patches/s and TransUNet3D's
share of the ceiling against the 25 % goal.

    python bench/train_bench.py --compile                                   # GPU, 128^3 b2
    python bench/train_bench.py --device cpu --patch 64 64 32 --batch 1 --steps 3 --warmup 1
    python bench/train_bench.py --compile --patch 128 128 32 --data-path 8   # + the stage's data path

Run it as a script (it imports its siblings ``model_costs`` and ``plain_conv_unet``); it is
not a test and pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from model_costs import count_flops
from plain_conv_unet import PlainConvUNet
from torch import nn

log = logging.getLogger(__name__)

MODEL_NAMES = ("transunet3d", "monai_unet", "plain_conv_unet")
TRANSUNET = "transunet3d"
BASELINE = "plain_conv_unet"
CEILING_GOAL = 25.0
"""Target share (%) of the matmul ceiling for volseg's TransUNet3D training step."""


@dataclass
class BenchResult:
    """One row of the table: a network's cost and measured training speed."""

    name: str
    params: int
    flops_per_step: int
    """Forward + backward FLOPs of one step for the whole batch (2 per multiply-add)."""
    activations: int
    """Elements output by the leaf modules in one forward of the whole batch."""
    voxels_per_patch: int
    batch: int
    compiled: bool = False
    step_times: list[float] = field(default_factory=list)
    peak_mem_gib: float | None = None
    note: str = ""

    @property
    def step_s(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None

    @property
    def patches_per_s(self) -> float | None:
        step = self.step_s
        return self.batch / step if step else None

    @property
    def tflops(self) -> float | None:
        step = self.step_s
        return self.flops_per_step / step / 1e12 if step else None

    def percent_of(self, ceiling_tflops: float | None) -> float | None:
        tflops = self.tflops
        if tflops is None or not ceiling_tflops:
            return None
        return 100.0 * tflops / ceiling_tflops


def model_factories(
    patch: tuple[int, int, int], transunet_params: dict[str, Any] | None = None
) -> dict[str, Callable[[], nn.Module]]:
    """Builders for the benchmarked networks (1 input channel, 1 logit channel).

    ``transunet_params`` overrides TransUNet3D constructor arguments (default: none).
    """

    def transunet() -> nn.Module:
        from volseg.models import build_model

        # The positional-embedding grid is defined on the patch, as a config training at
        # this patch size would set it.
        params = {"in_channels": 1, "out_channels": 1, "img_size": patch}
        return build_model(TRANSUNET, **{**params, **(transunet_params or {})})

    def monai_unet() -> nn.Module:
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=(32, 64, 128, 256, 512),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        )

    def plain_conv_unet() -> nn.Module:
        return PlainConvUNet(in_channels=1, out_channels=1)

    return {TRANSUNET: transunet, "monai_unet": monai_unet, BASELINE: plain_conv_unet}


def step_costs(
    factory: Callable[[], nn.Module], patch: tuple[int, int, int], batch: int
) -> tuple[int, int]:
    """(forward + backward FLOPs, forward activation elements) of one step, on the meta device.

    Activation elements are the outputs of every leaf module in one forward: a proxy for the
    memory traffic of the norms, activations and convolutions, so FLOPs per element is a
    rough arithmetic intensity (higher suits tensor cores better).
    """
    with torch.device("meta"):
        model = factory()
    total = 0

    def add_output(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(add_output) for m in leaves]
    try:
        model(torch.empty(1, 1, *patch, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return count_flops(model, patch)[1] * batch, total * batch


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int, iters: int) -> float:
    """Achieved TFLOP/s of a ``size``-cubed matmul loop: the practical dense-math ceiling."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        torch.matmul(a, b, out=out)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return 2.0 * size**3 * iters / elapsed / 1e12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(
    model: nn.Module, device: torch.device, lr: float
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One AdamW step on ``(image, label)``: autocast forward, FinetuneLoss, backward."""
    from volseg.losses import FinetuneLoss

    loss_fn = FinetuneLoss(supcon_weight=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=device.type == "cuda")
    amp = device.type == "cuda"

    def step(image: torch.Tensor, label: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(image)
        loss, _ = loss_fn(logits.float(), label)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def time_steps(
    step: Callable[[torch.Tensor, torch.Tensor], float],
    image: torch.Tensor,
    label: torch.Tensor,
    steps: int,
    warmup: int,
) -> list[float]:
    """Seconds per step for ``steps`` steps after ``warmup`` untimed ones."""
    device = image.device
    for _ in range(warmup):
        loss = step(image, label)
        if not math.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss} during warm-up")
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step(image, label)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def describe_model(
    name: str, factory: Callable[[], nn.Module], patch: tuple[int, int, int], batch: int
) -> BenchResult:
    """Parameters, FLOPs and activations of one network, counted on the meta device."""
    from volseg.models._common import count_parameters

    with torch.device("meta"):
        params = count_parameters(factory())
    flops, activations = step_costs(factory, patch, batch)
    return BenchResult(
        name=name,
        params=params,
        flops_per_step=flops,
        activations=activations,
        voxels_per_patch=math.prod(patch),
        batch=batch,
    )


def training_inputs(
    factory: Callable[[], nn.Module],
    patch: tuple[int, int, int],
    batch: int,
    device: torch.device,
    channels_last: bool,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Seeded network in train mode, random image and ~10 % foreground label on ``device``;
    all three in ``channels_last_3d`` when asked."""
    torch.manual_seed(0)
    model = factory().to(device).train()
    image = torch.rand(batch, 1, *patch, device=device)
    label = (torch.rand(batch, 1, *patch, device=device) < 0.1).float()
    if channels_last:
        fmt = torch.channels_last_3d
        model = model.to(memory_format=fmt)
        image, label = image.contiguous(memory_format=fmt), label.contiguous(memory_format=fmt)
    return model, image, label


def bench_model(
    name: str,
    factory: Callable[[], nn.Module],
    *,
    patch: tuple[int, int, int],
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    compile_model: bool = False,
    lr: float = 1e-4,
    channels_last: bool = False,
) -> BenchResult:
    """Count, build, warm up and time one network; OOM and compile failure go in ``note``."""
    result = describe_model(name, factory, patch, batch)
    if compile_model:
        result.name += " (compile)"
        result.compiled = True
    if channels_last:
        result.name += " (channels-last)"
    model, image, label = training_inputs(factory, patch, batch, device, channels_last)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    log.info("%s: %.1f M params, warming up", result.name, result.params / 1e6)
    try:
        if compile_model:
            try:
                step = make_train_step(torch.compile(model), device, lr)
                result.step_times = time_steps(step, image, label, steps, warmup)
            except Exception as exc:  # noqa: BLE001 - any compile failure falls back to eager
                log.warning("%s: torch.compile failed (%s); timing eager instead", name, exc)
                result.note = f"compile failed ({type(exc).__name__}), eager"
                result.compiled = False
                step = make_train_step(model, device, lr)
                result.step_times = time_steps(step, image, label, steps, warmup)
        else:
            step = make_train_step(model, device, lr)
            result.step_times = time_steps(step, image, label, steps, warmup)
    except torch.OutOfMemoryError:
        result.note = "out of memory"
        log.warning("%s: out of memory at batch %d, patch %s", name, batch, patch)
    if device.type == "cuda":
        result.peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def stage_fed_rates(
    factory: Callable[[], nn.Module],
    *,
    patch: tuple[int, int, int],
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    studies: int,
    workers: int,
    lr: float = 1e-4,
    compile_model: bool = False,
    channels_last: bool = False,
) -> list[tuple[str, float]]:
    """Patches/s of one network's training step, in one run: on tensors already on the
    device (the network alone), then fed by the fine-tuning stage's own DataLoader over
    ``studies`` prepared synthetic mosmed studies, augmented in the workers (``worker``)
    and on the device (``device``: :func:`volseg.data.batch_augment.augment_batch`).

    The fed rates count the wall time of ``steps`` steps after ``warmup``, loader waits
    included: how close the real stage's data path comes to the network-alone rate.
    ``compile_model`` and ``channels_last`` set the step up as ``finetune.compile`` and
    ``finetune.channels_last`` do (``configs/mosmed.yaml`` has both), for all three rows; a
    failed compile falls back to eager, logged.
    """
    import tempfile

    from data_path_bench import prepared_config, stage_dataset

    from volseg.data.batch_augment import PARAMS_KEY, augment_batch
    from volseg.engine import StepSampler, make_loader

    model, image, label = training_inputs(factory, patch, batch, device, channels_last)
    step = make_train_step(model, device, lr)
    if compile_model:
        try:
            compiled = make_train_step(torch.compile(model), device, lr)
            time_steps(compiled, image, label, 1, max(warmup, 1))  # compiles here
            step = compiled
        except Exception as exc:  # noqa: BLE001 - any compile failure falls back to eager
            log.warning("stage data path: torch.compile failed (%s); eager instead", exc)
    alone = statistics.median(time_steps(step, image, label, steps, warmup))
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    rates = [("network alone (tensors on the device)", batch / alone)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = prepared_config(Path(tmp), studies, [f"model.patch_size={list(patch)}"])
        for path in ("worker", "device"):
            dataset = stage_dataset(cfg, True, path)
            sampler = StepSampler(0, warmup + steps, batch)
            start = 0.0
            for i, item in enumerate(make_loader(dataset, sampler, workers)):
                if i == warmup:
                    synchronize(device)
                    start = time.perf_counter()
                params = item.pop(PARAMS_KEY, None)
                moved = {k: v.to(device, non_blocking=True) for k, v in item.items()}
                if params is not None:
                    moved = augment_batch(moved, params)
                step(
                    moved["image"].contiguous(memory_format=fmt),
                    moved["label"].contiguous(memory_format=fmt),
                )
            synchronize(device)
            elapsed = time.perf_counter() - start
            name = f"stage data path, augment_on {path}, {workers} DataLoader workers"
            rates.append((name, steps * batch / elapsed))
    return rates


def format_fed_table(rates: list[tuple[str, float]]) -> str:
    """The network-alone and stage-fed rates, with each one's share of the first."""
    alone = rates[0][1]
    lines = ["| training step fed by | patches/s | x network alone |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:.2f} | {rate / alone:.2f} |" for name, rate in rates]
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(results: list[BenchResult], ceiling: float | None) -> str:
    """Markdown table of the results, one row per network."""
    lines = [
        "| model | params (M) | GFLOP/step | kFLOP/voxel | FLOP/act | step (ms) | patches/s "
        "| TFLOP/s | % of ceiling | peak mem (GiB) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        per_voxel = r.flops_per_step / r.batch / r.voxels_per_patch / 1e3
        step_ms = r.step_s * 1e3 if r.step_s is not None else None
        lines.append(
            f"| {r.name} | {r.params / 1e6:.2f} | {r.flops_per_step / 1e9:.1f} | {per_voxel:.0f} "
            f"| {r.flops_per_step / r.activations:.0f} "
            f"| {_fmt(step_ms, '.1f')} | {_fmt(r.patches_per_s, '.2f')} "
            f"| {_fmt(r.tflops, '.3f')} | {_fmt(r.percent_of(ceiling), '.1f')} "
            f"| {_fmt(r.peak_mem_gib, '.1f')} | {r.note} |"
        )
    return "\n".join(lines)


def summary_lines(results: list[BenchResult], ceiling: float | None) -> list[str]:
    """TransUNet3D vs PlainConvUNet FLOP and speed ratios, TransUNet3D's share of the ceiling."""
    base = next((r for r in results if r.name == BASELINE), None)
    ours = [r for r in results if r.name.startswith(TRANSUNET)]
    lines = []
    if base is not None and ours:
        r = ours[0]
        lines.append(
            f"- TransUNet3D / PlainConvUNet FLOPs per patch: "
            f"{r.flops_per_step / base.flops_per_step:.2f}; FLOP per activation element: "
            f"{r.flops_per_step / r.activations:.0f} vs {base.flops_per_step / base.activations:.0f}"
        )
    for r in ours:
        if r.patches_per_s is None:
            continue
        label = "compiled" if r.compiled else "eager"
        if base is not None and base.patches_per_s:
            lines.append(
                f"- TransUNet3D ({label}) patches/s / PlainConvUNet patches/s: "
                f"{r.patches_per_s / base.patches_per_s:.2f}"
            )
        share = r.percent_of(ceiling)
        verdict = "meets" if share is not None and share >= CEILING_GOAL else "below"
        lines.append(
            f"- TransUNet3D ({label}) reaches {_fmt(share, '.1f')} % of the ceiling "
            f"({verdict} the {CEILING_GOAL:.0f} % goal)"
        )
    return lines


def parse_models(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODEL_NAMES)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128), metavar="N")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument(
        "--compile", action="store_true", help="also time TransUNet3D under torch.compile"
    )
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--models",
        type=parse_models,
        default=list(MODEL_NAMES),
        help=f"comma-separated subset of {','.join(MODEL_NAMES)}",
    )
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="ceiling matmul size (8192 CUDA, 1024 CPU)"
    )
    parser.add_argument(
        "--costs-only",
        action="store_true",
        help="count params/FLOPs on the meta device only: no ceiling, no timing (seconds)",
    )
    parser.add_argument(
        "--transunet-params",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="TransUNet3D constructor overrides, e.g. '{\"widths\": [48, 96, 192, 384, 384]}'",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="every network, input and label in channels_last_3d (NDHWC) memory format",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the table, profile N steps of the first model (kernel-time table)",
    )
    parser.add_argument(
        "--data-path",
        type=int,
        default=0,
        metavar="STUDIES",
        help="also time the first model's step fed by the fine-tuning stage's DataLoader "
        "(worker and device augmentation) over this many prepared synthetic mosmed studies, "
        "beside the network alone (0: off)",
    )
    parser.add_argument(
        "--loader-workers", type=int, default=4, help="DataLoader workers for --data-path"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def run_benchmark(
    args: argparse.Namespace,
    device: torch.device,
    patch: tuple[int, int, int],
    factories: dict[str, Callable[[], nn.Module]],
) -> tuple[list[BenchResult], float, str]:
    """Measure the ceiling, then time every requested network: (results, ceiling, header)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    size = args.matmul_size or (8192 if device.type == "cuda" else 1024)
    ceiling = matmul_ceiling(device, dtype, size, iters=50 if device.type == "cuda" else 5)
    log.info("%s matmul %d^3 ceiling: %.2f TFLOP/s", dtype_name, size, ceiling)
    runs = [(name, False) for name in args.models]
    if args.compile and TRANSUNET in args.models:
        runs.insert(args.models.index(TRANSUNET) + 1, (TRANSUNET, True))
    results = [
        bench_model(
            name,
            factories[name],
            patch=patch,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            device=device,
            compile_model=compiled,
            lr=args.lr,
            channels_last=args.channels_last,
        )
        for name, compiled in runs
    ]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    header = (
        f"{device_name}, torch {torch.__version__}, patch {'x'.join(map(str, patch))}, "
        f"batch {args.batch}, {precision}, median of {args.steps} steps after {args.warmup} "
        f"warm-up; {dtype_name} matmul {size}^3 ceiling {ceiling:.2f} TFLOP/s"
    )
    return results, ceiling, header


def profile_steps(
    name: str,
    factory: Callable[[], nn.Module],
    *,
    patch: tuple[int, int, int],
    batch: int,
    device: torch.device,
    steps: int,
    channels_last: bool = False,
    rows: int = 15,
) -> str:
    """Kernel-time table of ``steps`` training steps of one network (after 3 warm-up steps).

    Answers "where does the step's time go" (e.g. how much is normalisation or layout
    transposes) with ``torch.profiler``; sorted by device self time on CUDA, CPU self time
    otherwise.
    """
    from torch.profiler import ProfilerActivity, profile

    model, image, label = training_inputs(factory, patch, batch, device, channels_last)
    step = make_train_step(model, device, lr=1e-4)
    for _ in range(3):
        step(image, label)
    synchronize(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(image, label)
        synchronize(device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    return f"profile of {steps} training steps of {name}:\n{table}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if min(args.patch) < 1 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--patch, --batch and --steps must be positive, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu)")
    device = torch.device(args.device)
    patch = tuple(args.patch)
    if args.transunet_params is not None and not isinstance(args.transunet_params, dict):
        parser.error("--transunet-params must be a JSON object")
    factories = model_factories(patch, args.transunet_params)
    if args.costs_only:
        results = [describe_model(n, factories[n], patch, args.batch) for n in args.models]
        ceiling = None
        header = (
            f"costs only (meta device), patch {'x'.join(map(str, patch))}, batch {args.batch}, "
            "FLOPs = 2 x multiply-adds, forward + backward"
        )
    else:
        results, ceiling, header = run_benchmark(args, device, patch, factories)
    if args.transunet_params:
        header += f"; TransUNet3D overrides {json.dumps(args.transunet_params)}"
    print(header)
    print()
    print(format_table(results, ceiling))
    print()
    print("\n".join(summary_lines(results, ceiling)))
    if args.profile > 0 and not args.costs_only:
        name = args.models[0]
        print()
        print(
            profile_steps(
                name,
                factories[name],
                patch=patch,
                batch=args.batch,
                device=device,
                steps=args.profile,
                channels_last=args.channels_last,
            )
        )
    fed = None
    if args.data_path > 0 and not args.costs_only:
        name = args.models[0]
        fed = stage_fed_rates(
            factories[name],
            patch=patch,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            device=device,
            studies=args.data_path,
            workers=args.loader_workers,
            lr=args.lr,
            compile_model=args.compile,
            channels_last=args.channels_last,
        )
        setup = ", ".join(
            [("compile" if args.compile else "eager")]
            + (["channels-last"] if args.channels_last else [])
        )
        print()
        print(f"{name}, {setup}, fed by the fine-tuning stage's data path:")
        print(format_fed_table(fed))
    if args.json is not None:
        from volseg.io import write_json_atomic

        write_json_atomic(
            args.json,
            {
                "header": header,
                "ceiling_tflops": ceiling,
                "results": [
                    {
                        **asdict(r),
                        "step_s": r.step_s,
                        "patches_per_s": r.patches_per_s,
                        "tflops": r.tflops,
                        "percent_of_ceiling": r.percent_of(ceiling),
                    }
                    for r in results
                ],
                "stage_fed": None
                if fed is None
                else [{"fed_by": n, "patches_per_s": r} for n, r in fed],
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
