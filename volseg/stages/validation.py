"""Validation of a segmentation network on cached (preprocessed) volumes.

Each volume is segmented whole with MONAI's ``sliding_window_inference`` (gaussian
blending), exactly as ``volseg predict`` tiles a scan, on the cached working grid. The
probability is thresholded, restricted to the lung mask when the volume has one (as
``predict`` does with ``restrict_to_lungs``), and compared with the cached reference mask.
Dice is computed over the WHOLE volume from voxel counts
(:func:`volseg.evaluation.metrics.overlap_metrics`), never per patch or per slice; the mean
over scans is ``val_dice``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from volseg.data.cache import CachedVolume
from volseg.engine.device import autocast_for
from volseg.evaluation.metrics import overlap_metrics

log = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    """Per-case metrics and their means over cases (NaN values left out of the means)."""

    cases: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.cases)

    def means(self, prefix: str = "val_") -> dict[str, float]:
        """``{prefix + metric: mean over cases}``; NaN when no case defines it."""
        out: dict[str, float] = {}
        names = sorted({k for case in self.cases.values() for k in case})
        for name in names:
            values = [c[name] for c in self.cases.values() if not math.isnan(c.get(name, math.nan))]
            out[prefix + name] = float(np.mean(values)) if values else math.nan
        return out


@torch.no_grad()
def volume_probability(
    model: nn.Module,
    image: np.ndarray,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: torch.device | None = None,
) -> np.ndarray:
    """Lesion probability ``(X, Y, Z)`` float32 of a whole cached image, by sliding window."""
    from monai.inferers import sliding_window_inference

    device = device or next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)[None, None]
    with autocast_for(device):
        logits = sliding_window_inference(
            x,
            roi_size=tuple(int(r) for r in roi_size),
            sw_batch_size=sw_batch_size,
            predictor=model,
            overlap=overlap,
            mode="gaussian",
        )
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


def validate_volumes(
    model: nn.Module,
    volumes: Sequence[CachedVolume],
    roi_size: Sequence[int],
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    threshold: float = 0.5,
    restrict_to_lungs: bool = True,
    device: torch.device | None = None,
) -> ValidationResult:
    """Whole-volume Dice, sensitivity and precision of ``model`` on labeled cached volumes.

    The model is put in eval mode for the call and its previous mode restored. Volumes
    without a reference mask are refused (``ValueError``): validation needs true labels.
    """
    result = ValidationResult()
    was_training = model.training
    model.eval()
    try:
        for vol in volumes:
            ref = vol.label()
            if ref is None:
                raise ValueError(f"{vol.id}: no reference mask to validate against")
            prob = volume_probability(
                model,
                vol.image(),
                roi_size,
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                device=device,
            )
            pred = prob >= threshold
            lungs = vol.lungs() if restrict_to_lungs else None
            if lungs is not None:
                pred &= np.asarray(lungs) > 0
            m = overlap_metrics(pred, np.asarray(ref) > 0)
            result.cases[vol.id] = {k: m[k] for k in ("dice", "sensitivity", "precision")}
            log.debug("val %s: dice %.4f", vol.id, m["dice"])
    finally:
        model.train(was_training)
    return result
