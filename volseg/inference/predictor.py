"""Per-volume prediction: native HU volume in, lesion probability and mask on the native grid.

Steps (all on the model's device): reorient + resample to the bundle's working spacing
(:class:`volseg.geometry.WorkingGrid`), HU window to [0, 1], crop to the body, MONAI
``sliding_window_inference`` with gaussian blending (autocast on GPU), optional flip TTA,
sigmoid, probability mapped back to the native grid, threshold, restriction to the lung
mask grown by ``lung_margin_mm`` (consolidation at the pleura is soft-tissue dense and lies
just outside an automatic lung mask), removal of small components and of components that
do not touch the lungs. The reported lungs are the lung mask plus the lesion: involvement
divides by lung that holds air and lung that lost it. The output grid is the input grid by
construction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from volseg.bundle import Bundle
from volseg.engine.device import autocast_for
from volseg.geometry import WorkingGrid, window_hu
from volseg.inference.postprocess import keep_touching, lesion_region, remove_small_components

if TYPE_CHECKING:
    from volseg.data.lungs import LungMask
from volseg.quantify import spacing_from_affine

log = logging.getLogger(__name__)

BODY_THRESHOLD_HU = -500.0
BODY_MARGIN_VOXELS = 2
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


@dataclass
class PredictOptions:
    """Inference settings; defaults come from the bundle, flags override them."""

    roi_size: tuple[int, int, int] = (96, 96, 32)
    overlap: float = 0.5
    sw_batch_size: int = 4
    tta: bool = False
    threshold: float = 0.5
    min_component_mm3: float = 10.0
    min_involvement_pct: float = 0.0
    restrict_to_lungs: bool = True
    lung_margin_mm: float = 10.0
    consolidation_min_hu: float = -200.0
    uncertainty: bool = False
    review_disagreement: float = 0.5

    @classmethod
    def from_bundle(cls, bundle: Bundle, **overrides: object) -> PredictOptions:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in bundle.predict_defaults.items() if k in known}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "roi_size" in values:
            values["roi_size"] = tuple(int(v) for v in values["roi_size"])  # type: ignore[union-attr]
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class Prediction:
    """Native-grid outputs of one scan."""

    mask: np.ndarray  # uint8 0/1
    probability: np.ndarray  # float32 in [0, 1]
    lungs: np.ndarray | None  # uint8 0/1, or None when not used
    gated: bool = False  # lesions found but below the lesion-presence gate: mask emptied
    uncertainty: np.ndarray | None = None  # float32: max - min probability over the flips
    disagreement: float | None = None  # 1 - |flips agreeing| / |any flip| on the lesion


@dataclass
class FlipProbabilities:
    """Native-grid probability over the flips (their mean) and its spread (min and max)."""

    mean: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def body_bbox(volume: torch.Tensor, threshold: float, margin: int) -> tuple[slice, ...]:
    """Bounding box (over the last three dims) of voxels above ``threshold``, with a margin."""
    fg = (volume > threshold).reshape(volume.shape[-3:])
    if not bool(fg.any()):
        return tuple(slice(0, n) for n in volume.shape[-3:])
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(fg.any(dim=other)).flatten()
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, fg.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


class Predictor:
    """Runs one bundle on native volumes; reuse it across scans."""

    def __init__(
        self, bundle: Bundle, options: PredictOptions, device: torch.device | None = None
    ) -> None:
        self.bundle = bundle
        self.options = options
        self.device = device or next(bundle.model.parameters()).device
        self.model = bundle.model.to(self.device).eval()
        self.spacing = tuple(float(s) for s in bundle.preprocessing["spacing"])
        self.hu_window = tuple(float(v) for v in bundle.preprocessing["hu_window"])

    def probability(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Lesion probability on the native grid of ``image`` (float32, same shape)."""
        return self.flip_probabilities(image, affine).mean

    @torch.inference_mode()
    def flip_probabilities(self, image: np.ndarray, affine: np.ndarray) -> FlipProbabilities:
        """Probability on the native grid, the mean over the flips (``tta``; all eight with
        ``uncertainty``, which also keeps the per-voxel minimum and maximum over them)."""
        from monai.inferers import sliding_window_inference

        grid = WorkingGrid.plan(affine, image.shape, self.spacing)
        native = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        native = native.to(self.device, non_blocking=True)[None, None]
        hu = grid.to_working(native)
        box = body_bbox(hu, BODY_THRESHOLD_HU, BODY_MARGIN_VOXELS)
        x = window_hu(hu[(..., *box)], self.hu_window)
        opts = self.options
        flips = TTA_FLIPS if opts.tta or opts.uncertainty else ((),)
        prob = torch.zeros_like(x)
        low = torch.ones_like(x) if opts.uncertainty else None
        high = torch.zeros_like(x) if opts.uncertainty else None
        with autocast_for(self.device):
            for dims in flips:
                xi = x.flip(dims) if dims else x
                logits = sliding_window_inference(
                    xi,
                    roi_size=opts.roi_size,
                    sw_batch_size=opts.sw_batch_size,
                    predictor=self.model,
                    overlap=opts.overlap,
                    mode="gaussian",
                )
                p = torch.sigmoid(logits.float())
                p = p.flip(dims) if dims else p
                prob += p
                if low is not None and high is not None:
                    torch.minimum(low, p, out=low)
                    torch.maximum(high, p, out=high)
        prob /= len(flips)

        def native(values: torch.Tensor, fill: float) -> np.ndarray:
            full = torch.full_like(hu, fill)
            full[(..., *box)] = values
            back = grid.to_native(full).clamp_(0.0, 1.0)
            return back[0, 0].cpu().numpy().astype(np.float32, copy=False)

        if low is None or high is None:
            return FlipProbabilities(native(prob, 0.0))
        return FlipProbabilities(native(prob, 0.0), native(low, 0.0), native(high, 0.0))

    def predict(
        self, image: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None = None
    ) -> Prediction:
        """Probability, thresholded and cleaned mask; ``lungs`` restricts the mask if given."""
        flips = self.flip_probabilities(image, affine)
        prob, opts = flips.mean, self.options
        spacing = spacing_from_affine(affine)
        mask, used = restrict_to_lungs(prob >= opts.threshold, lungs, spacing, opts)
        gated = self._below_gate(mask, used)
        if gated:
            mask[:] = False
        result = Prediction(mask.astype(np.uint8), prob, used, gated)
        if flips.low is not None and flips.high is not None:
            result.uncertainty = flips.high - flips.low
            result.disagreement = flip_disagreement(flips, lungs, spacing, opts)
        return result

    def _below_gate(self, mask: np.ndarray, lungs: np.ndarray | None) -> bool:
        """True when lesions were found but fill less than ``min_involvement_pct`` of the lungs."""
        gate = self.options.min_involvement_pct
        if gate <= 0 or not mask.any():
            return False
        if lungs is None:
            log.warning("no lung mask: the lesion-presence gate (%.3f %%) is not applied", gate)
            return False
        n_lungs = int(np.count_nonzero(lungs))
        return n_lungs > 0 and 100.0 * float(np.count_nonzero(mask)) / n_lungs < gate


def restrict_to_lungs(
    mask: np.ndarray,
    lungs: np.ndarray | None,
    spacing: Sequence[float],
    options: PredictOptions,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Thresholded ``mask`` cleaned and kept near the lungs, and the lungs it is measured in.

    Inside the lungs grown by ``lung_margin_mm``, components of at least
    ``min_component_mm3`` that touch the lungs; the lungs returned are ``lungs`` plus that
    lesion (uint8), or None without a lung mask (or with ``restrict_to_lungs`` off, the
    lung mask as given).
    """
    mask = np.asarray(mask, dtype=bool)
    use = lungs is not None and options.restrict_to_lungs
    if use:
        mask = mask & lesion_region(lungs, spacing, options.lung_margin_mm)
    mask = remove_small_components(mask, spacing, options.min_component_mm3)
    if not use:
        return mask, None if lungs is None else np.asarray(lungs, dtype=np.uint8)
    inside = np.asarray(lungs) > 0
    mask = keep_touching(mask, inside)
    return mask, (inside | mask).astype(np.uint8)


def flip_disagreement(
    flips: FlipProbabilities,
    lungs: np.ndarray | None,
    spacing: Sequence[float],
    options: PredictOptions,
) -> float:
    """How much the flipped predictions disagree on the lesion: 1 - |voxels every flip
    calls lesion| / |voxels some flip calls lesion|, each cleaned as the mask is (0 when no
    flip finds a lesion). High on a scan whose lesions the model is unsure of."""
    if flips.low is None or flips.high is None:
        raise ValueError("flip_disagreement needs the minimum and maximum over the flips")
    every, _ = restrict_to_lungs(flips.low >= options.threshold, lungs, spacing, options)
    some, _ = restrict_to_lungs(flips.high >= options.threshold, lungs, spacing, options)
    n_some = int(np.count_nonzero(some))
    return 0.0 if n_some == 0 else 1.0 - float(np.count_nonzero(every & some)) / n_some


def lung_mask_for(image: np.ndarray, affine: np.ndarray) -> LungMask:
    """Lung mask of a native HU volume (:func:`volseg.data.lungs.lung_mask`) with its QC."""
    from volseg.data.lungs import lung_mask

    return lung_mask(image, affine)


def parse_roi(values: Sequence[int] | None) -> tuple[int, int, int] | None:
    if values is None:
        return None
    if len(values) == 1:
        return (int(values[0]),) * 3  # type: ignore[return-value]
    if len(values) != 3:
        raise ValueError("--roi takes one or three sizes")
    return tuple(int(v) for v in values)  # type: ignore[return-value]
