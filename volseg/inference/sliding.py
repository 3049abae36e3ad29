"""The one sliding-window call: MONAI ``sliding_window_inference`` with gaussian blending.

Every whole-volume pass of a network goes through :func:`sliding_window` — the segmentation
network in :class:`volseg.inference.predictor.Predictor` (predict, finetune validation,
gate calibration) and the GAN's generator for its residual maps — so tiling, blending and
precision are the same everywhere. The defaults (ROI = the recipe's patch size, overlap,
windows per batch) come from :class:`volseg.recipe.Recipe` and ``predict`` settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from volseg.engine.device import autocast_for
from volseg.utils import eval_mode

DEFAULT_OVERLAP = 0.5
DEFAULT_SW_BATCH = 4


def sliding_window(
    net: nn.Module,
    x: torch.Tensor,
    roi_size: Sequence[int],
    *,
    overlap: float = DEFAULT_OVERLAP,
    sw_batch_size: int = DEFAULT_SW_BATCH,
    precision: str = "auto",
) -> torch.Tensor:
    """``net`` over a whole ``(B, C, X, Y, Z)`` tensor, tiled by ``roi_size`` windows with
    gaussian blending; float32 output on ``x``'s device. The network runs in eval mode
    (its previous mode restored) without gradients, at ``precision``
    (:data:`volseg.engine.device.PRECISIONS`; ``auto``: autocast on a GPU, fp32 on a CPU)."""
    from monai.inferers import sliding_window_inference

    with eval_mode(net), torch.inference_mode(), autocast_for(x.device, precision):
        out = sliding_window_inference(
            x,
            roi_size=tuple(int(r) for r in roi_size),
            sw_batch_size=int(sw_batch_size),
            predictor=net,
            overlap=float(overlap),
            mode="gaussian",
        )
    return out.float()
