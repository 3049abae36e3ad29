"""The one sliding window at each inference precision."""

from __future__ import annotations

import torch
from torch import nn

from volseg.inference.sliding import sliding_window


def test_bf16_on_cpu_is_close_to_fp32_and_auto_is_fp32() -> None:
    """A small conv net over a volume larger than its window: ``auto`` on a CPU is fp32 to
    the bit; ``bf16`` really runs in bfloat16 (not bitwise equal) and stays within its
    rounding (8 bits of mantissa) of fp32."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 1, 3, padding=1))
    x = torch.rand(1, 1, 20, 18, 9)
    exact = sliding_window(net, x, (8, 8, 4), precision="fp32")
    assert torch.equal(sliding_window(net, x, (8, 8, 4), precision="auto"), exact)
    fast = sliding_window(net, x, (8, 8, 4), precision="bf16")
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert not torch.equal(fast, exact)
    assert (fast - exact).abs().max() < 0.02 * exact.abs().max()
