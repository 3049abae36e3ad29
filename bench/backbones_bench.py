"""Cost of every segmentation backbone x recalibration: parameters, FLOPs, training patches/s.

Parameters and FLOPs are counted on the ``meta`` device (shapes only) with
``bench/model_costs.py``'s ``count_flops``, so they run on any CPU in seconds. Training
throughput needs a CUDA GPU: bf16 autocast, BCE loss, AdamW step, batch 2, warm-up steps, then
timed steps between ``torch.cuda.synchronize()`` calls; without one the column reads
"n/a (no GPU)". Not a test; prints a Markdown table:

    python bench/backbones_bench.py                          # default nets, 128x128x32 patch
    python bench/backbones_bench.py --patch 96 96 32 --steps 30
    python bench/backbones_bench.py --backbones unet3d unetpp3d --recalibrations none se

FLOPs are torch's count (2 per multiply-add) of convolutions and matmuls; the pooling, log and
sigmoid of SSR and the elementwise gates are not counted, though SSR's box sums over
full-resolution features cost memory traffic that the throughput column does show.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from model_costs import count_flops  # bench/ is on sys.path when run as a script

from volseg.models import MODELS, build_model
from volseg.models._common import count_parameters
from volseg.models.recalibration import RECALIBRATIONS


def train_throughput(
    model: torch.nn.Module,
    patch: tuple[int, int, int],
    batch: int,
    steps: int,
    warmup: int,
) -> float:
    """Training patches/s on CUDA: bf16 autocast forward + BCE + backward + AdamW step."""
    device = torch.device("cuda")
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, *patch, device=device)
    y = (torch.rand(batch, 1, *patch, device=device) > 0.9).float()

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs=3, default=(128, 128, 32), metavar="N")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (GPU)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (GPU)")
    parser.add_argument("--backbones", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--recalibrations", nargs="+", default=list(RECALIBRATIONS), choices=RECALIBRATIONS
    )
    args = parser.parse_args(argv)
    patch = tuple(args.patch)
    voxels = math.prod(patch)
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if gpu else "no GPU"
    print(
        f"patch {patch[0]}x{patch[1]}x{patch[2]}, default widths, FLOPs = 2 x multiply-adds "
        f"(batch 1); throughput: batch {args.batch}, bf16, AdamW, {device}"
    )
    print(
        "| backbone | recalibration | params (M) | fwd GFLOP | fwd+bwd GFLOP "
        "| fwd+bwd kFLOP/voxel | train patches/s |\n|---|---|---:|---:|---:|---:|---:|"
    )
    for name in args.backbones:
        for recal in args.recalibrations:
            torch.manual_seed(0)
            model = build_model(name, recalibration=recal)
            params = count_parameters(model)
            fwd, both = count_flops(model.to("meta"), patch)
            if gpu:
                torch.manual_seed(0)
                model = build_model(name, recalibration=recal)
                rate = train_throughput(model, patch, args.batch, args.steps, args.warmup)
                speed = f"{rate:.1f}"
                del model
                torch.cuda.empty_cache()
            else:
                speed = "n/a (no GPU)"
            print(
                f"| {name} | {recal} | {params / 1e6:.2f} | {fwd / 1e9:.1f} | {both / 1e9:.1f} "
                f"| {both / voxels / 1e3:.0f} | {speed} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
