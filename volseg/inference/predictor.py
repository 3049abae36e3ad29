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
    consolidation_min_hu: float = -300.0

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

    @torch.inference_mode()
    def probability(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Lesion probability on the native grid of ``image`` (float32, same shape)."""
        from monai.inferers import sliding_window_inference

        grid = WorkingGrid.plan(affine, image.shape, self.spacing)
        native = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        native = native.to(self.device, non_blocking=True)[None, None]
        hu = grid.to_working(native)
        box = body_bbox(hu, BODY_THRESHOLD_HU, BODY_MARGIN_VOXELS)
        x = window_hu(hu[(..., *box)], self.hu_window)
        opts = self.options
        flips = TTA_FLIPS if opts.tta else ((),)
        prob = torch.zeros_like(x)
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
                prob += p.flip(dims) if dims else p
        prob /= len(flips)
        full = torch.zeros_like(hu)
        full[(..., *box)] = prob
        back = grid.to_native(full).clamp_(0.0, 1.0)
        return back[0, 0].cpu().numpy().astype(np.float32, copy=False)

    def predict(
        self, image: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None = None
    ) -> Prediction:
        """Probability, thresholded and cleaned mask; ``lungs`` restricts the mask if given."""
        prob = self.probability(image, affine)
        mask, lungs = restrict_to_lungs(
            prob >= self.options.threshold, lungs, spacing_from_affine(affine), self.options
        )
        gated = self._below_gate(mask, lungs)
        if gated:
            mask[:] = False
        return Prediction(mask.astype(np.uint8), prob, lungs, gated)

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
