"""Validation of a segmentation network on cached (preprocessed) volumes.

Each volume is segmented whole with MONAI's ``sliding_window_inference`` (gaussian
blending), exactly as ``volseg predict`` tiles a scan, on the cached working grid. The
probability is thresholded, restricted to the lungs when the volume has a lung mask (as
``predict`` does: grown by ``lung_margin_mm``, components touching the lungs), and compared
with the cached reference mask.
Dice is computed over the WHOLE volume from voxel counts
(:func:`volseg.evaluation.metrics.overlap_metrics`), never per patch or per slice; the mean
over scans is ``val_dice``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from volseg.data.cache import CachedVolume
from volseg.engine.device import autocast_for
from volseg.evaluation.metrics import overlap_metrics
from volseg.inference.postprocess import keep_touching, lesion_region

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


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _segment(
    model: nn.Module,
    vol: CachedVolume,
    roi_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
    threshold: float,
    lungs: np.ndarray | None,
    device: torch.device | None,
    lung_margin_mm: float = 0.0,
) -> np.ndarray:
    """Thresholded whole-volume prediction of a cached volume; with ``lungs``, inside the
    lungs grown by ``lung_margin_mm`` and touching them (as ``predict`` restricts it)."""
    prob = volume_probability(
        model, vol.image(), roi_size, overlap=overlap, sw_batch_size=sw_batch_size, device=device
    )
    pred = prob >= threshold
    if lungs is not None:
        inside = np.asarray(lungs) > 0
        pred = keep_touching(pred & lesion_region(inside, vol.spacing, lung_margin_mm), inside)
    return pred


def validate_volumes(
    model: nn.Module,
    volumes: Sequence[CachedVolume],
    roi_size: Sequence[int],
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    threshold: float = 0.5,
    restrict_to_lungs: bool = True,
    lung_margin_mm: float = 0.0,
    device: torch.device | None = None,
) -> ValidationResult:
    """Whole-volume Dice, sensitivity and precision of ``model`` on labeled cached volumes.

    The model is put in eval mode for the call and its previous mode restored. Volumes
    without a reference mask are refused (``ValueError``): validation needs true labels.
    """
    result = ValidationResult()
    with _eval_mode(model):
        for vol in volumes:
            ref = vol.label()
            if ref is None:
                raise ValueError(f"{vol.id}: no reference mask to validate against")
            lungs = vol.lungs() if restrict_to_lungs else None
            pred = _segment(
                model,
                vol,
                roi_size,
                overlap,
                sw_batch_size,
                threshold,
                lungs,
                device,
                lung_margin_mm,
            )
            m = overlap_metrics(pred, np.asarray(ref) > 0)
            result.cases[vol.id] = {k: m[k] for k in ("dice", "sensitivity", "precision")}
            log.debug("val %s: dice %.4f", vol.id, m["dice"])
    return result


# --------------------------------------------------------------------- lesion-presence gate


@dataclass(frozen=True)
class GateCase:
    """One validation scan as the lesion-presence gate sees it."""

    id: str
    involvement_pct: float
    """Predicted lesion voxels as a share of the lung voxels (%)."""
    dice: float
    """Dice of the ungated prediction against the reference."""
    empty_reference: bool
    """True for a healthy (CT-0) scan: its reference mask is empty by definition."""

    def gated_dice(self, gate_pct: float) -> float:
        """Dice once scans predicted below ``gate_pct`` are called lesion-free (empty mask)."""
        if self.involvement_pct >= gate_pct:
            return self.dice
        return 1.0 if self.empty_reference else 0.0


def gate_cases(
    model: nn.Module,
    labeled: Sequence[CachedVolume],
    healthy: Sequence[CachedVolume],
    roi_size: Sequence[int],
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    threshold: float = 0.5,
    lung_margin_mm: float = 0.0,
    device: torch.device | None = None,
) -> list[GateCase]:
    """Predicted involvement and Dice of labeled and healthy (empty-reference) scans.

    Predictions are thresholded and restricted to the lungs as in :func:`validate_volumes`;
    a volume without a lung mask is refused (``ValueError``): involvement needs the lungs.
    """
    cases = []
    with _eval_mode(model):
        for vol, empty in [(v, False) for v in labeled] + [(v, True) for v in healthy]:
            lungs = vol.lungs()
            ref = np.zeros(vol.shape, dtype=bool) if empty else vol.label()
            if lungs is None or ref is None:
                raise ValueError(f"{vol.id}: the gate needs a lung mask and a reference mask")
            lungs = np.asarray(lungs) > 0
            pred = _segment(
                model,
                vol,
                roi_size,
                overlap,
                sw_batch_size,
                threshold,
                lungs,
                device,
                lung_margin_mm,
            )
            involvement = 100.0 * float(pred.sum()) / max(int((lungs | pred).sum()), 1)
            dice = overlap_metrics(pred, np.asarray(ref) > 0)["dice"]
            cases.append(GateCase(vol.id, involvement, float(dice), empty))
    return cases


def choose_involvement_gate(cases: Sequence[GateCase]) -> float:
    """The predicted-involvement gate (%) that maximises the mean gated Dice of ``cases``.

    Candidates are 0 (no gate) and the midpoints between consecutive distinct predicted
    involvements (geometric, so the gate sits as far in ratio from the scan below as from
    the one above); ties go to the smallest gate, which calls the fewest scans lesion-free.
    When the healthy scans are all predicted below the labeled ones, the result is the
    midpoint between the highest healthy and the lowest labeled scan.
    """
    if not cases:
        return 0.0
    values = sorted({c.involvement_pct for c in cases})
    candidates = [0.0]
    for low, high in zip(values, values[1:], strict=False):
        candidates.append(math.sqrt(low * high) if low > 0 else high / 2.0)

    def score(gate: float) -> float:
        return float(np.mean([c.gated_dice(gate) for c in cases]))

    best = max(score(g) for g in candidates)
    return min(g for g in candidates if score(g) >= best - 1e-12)
