"""Parameters and FLOPs of volseg's default networks, counted with FlopCounterMode.

Counts on the ``meta`` device (shapes only, no arithmetic), so it runs in seconds on a CPU:

    python bench/model_costs.py                       # 128^3 patch, batch 1
    python bench/model_costs.py --patch 96 96 32      # the training patch size

FLOPs are torch's count (2 per multiply-add) for one forward, and forward + backward with a
scalar loss; "per voxel" divides by the patch's voxel count.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from volseg.models import Generator3D, PatchDiscriminator3D, TransUNet3D, UNet3D
from volseg.models._common import count_parameters


def count_flops(model: torch.nn.Module, patch: tuple[int, int, int]) -> tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) for one ``(1, 1, *patch)`` input."""
    x = torch.empty(1, 1, *patch, device="meta")
    with FlopCounterMode(display=False) as fwd:
        model(x)
    with FlopCounterMode(display=False) as both:
        model(x).float().sum().backward()
    return fwd.get_total_flops(), both.get_total_flops()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128), metavar="N")
    args = parser.parse_args(argv)
    patch = tuple(args.patch)
    voxels = math.prod(patch)
    models = {
        "TransUNet3D()": TransUNet3D(),
        "UNet3D()": UNet3D(),
        "Generator3D()": Generator3D(),
        "PatchDiscriminator3D()": PatchDiscriminator3D(),
    }
    print(f"patch {patch[0]}x{patch[1]}x{patch[2]}, batch 1, FLOPs = 2 x multiply-adds")
    print(
        "| network | params (M) | fwd GFLOP | fwd+bwd GFLOP | fwd+bwd kFLOP/voxel |\n"
        "|---|---:|---:|---:|---:|"
    )
    for name, model in models.items():
        params = count_parameters(model)
        fwd, both = count_flops(model.to("meta"), patch)
        print(
            f"| {name} | {params / 1e6:.2f} | {fwd / 1e9:.1f} | {both / 1e9:.1f} "
            f"| {both / voxels / 1e3:.0f} |"
        )


if __name__ == "__main__":
    main()
