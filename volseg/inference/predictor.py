"""The one predictor: native HU volume in, lesion probability and mask on the native grid.

Used by ``volseg predict``, fine-tuning validation, the lesion-presence gate's calibration
(:mod:`volseg.inference.validation`), and nothing else predicts. Steps (on the model's
device): the :class:`volseg.recipe.Recipe` (reorient + resample to the working spacing,
body crop, HU window), :func:`volseg.inference.sliding.sliding_window` (gaussian blending,
autocast on GPU), optional flip TTA, sigmoid, probability mapped back to the native grid,
threshold, restriction to the lung mask, removal of small components, the gate. The output
grid is the input grid by construction.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from volseg.inference.postprocess import remove_small_components
from volseg.inference.sliding import sliding_window
from volseg.quantify import spacing_from_affine
from volseg.recipe import Recipe

if TYPE_CHECKING:
    from volseg.bundle import Bundle
    from volseg.data.lungs import LungMask

log = logging.getLogger(__name__)

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


@dataclass(frozen=True)
class PredictOptions:
    """The inference settings in force. No defaults here: :meth:`resolve` starts from
    :class:`volseg.config.PredictConfig`'s and the recipe's patch size (the ROI)."""

    roi_size: tuple[int, int, int]
    overlap: float
    sw_batch_size: int
    tta: bool
    threshold: float
    min_component_mm3: float
    min_involvement_pct: float
    restrict_to_lungs: bool

    @classmethod
    def resolve(cls, recipe: Recipe, *layers: Mapping[str, Any] | None) -> PredictOptions:
        """``PredictConfig`` defaults, then each of ``layers`` in turn (a bundle's recorded
        settings, a config's ``predict`` section, command-line flags); None values skip."""
        from volseg.config import PredictConfig

        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            k: v for k, v in PredictConfig().model_dump().items() if k in known
        }
        values["roi_size"] = None
        for layer in layers:
            values.update({k: v for k, v in (layer or {}).items() if k in known and v is not None})
        roi = values["roi_size"] or recipe.patch_size
        values["roi_size"] = tuple(int(r) for r in roi)
        values["min_involvement_pct"] = float(values["min_involvement_pct"] or 0.0)
        return cls(**values)

    def ungated(self) -> PredictOptions:
        """The same settings without the lesion-presence gate (validation, calibration)."""
        return dataclasses.replace(self, min_involvement_pct=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def predict_overrides(section: Any) -> dict[str, Any]:
    """The :class:`PredictOptions` fields of a config's ``predict`` section (a
    :meth:`PredictOptions.resolve` layer; ``restrict_to_lungs`` is passed on its own)."""
    values = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    known = {f.name for f in dataclasses.fields(PredictOptions)} - {"restrict_to_lungs"}
    return {k: v for k, v in values.items() if k in known}


@dataclass
class Prediction:
    """Native-grid outputs of one scan."""

    mask: np.ndarray  # uint8 0/1
    probability: np.ndarray  # float32 in [0, 1]
    lungs: np.ndarray | None  # uint8 0/1, or None when not used
    gated: bool = False  # lesions found but below the lesion-presence gate: mask emptied


class Predictor:
    """A segmentation network, its recipe and the settings; reuse it across scans.

    The network is not moved or switched to eval mode for good (validation runs it during
    training); each pass runs in eval mode on the network's own device.
    """

    def __init__(self, model: torch.nn.Module, recipe: Recipe, options: PredictOptions) -> None:
        self.model = model
        self.recipe = recipe
        self.options = options
        self.device = next(model.parameters()).device

    @classmethod
    def from_bundle(cls, bundle: Bundle, *layers: Mapping[str, Any] | None) -> Predictor:
        """A predictor for a loaded bundle: its recipe, its recorded settings, then ``layers``."""
        options = PredictOptions.resolve(bundle.recipe, bundle.predict_defaults, *layers)
        return cls(bundle.model, bundle.recipe, options)

    def with_options(self, options: PredictOptions) -> Predictor:
        return Predictor(self.model, self.recipe, options)

    @torch.inference_mode()
    def probability(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Lesion probability on the native grid of ``image`` (float32, same shape)."""
        working, x = self.recipe.apply(image, affine, self.device)
        opts = self.options
        flips = TTA_FLIPS if opts.tta else ((),)
        prob = torch.zeros_like(x)
        for dims in flips:
            xi = x.flip(dims) if dims else x
            logits = sliding_window(
                self.model,
                xi,
                opts.roi_size,
                overlap=opts.overlap,
                sw_batch_size=opts.sw_batch_size,
            )
            p = torch.sigmoid(logits)
            prob += p.flip(dims) if dims else p
        prob /= len(flips)
        back = working.to_native(prob).clamp_(0.0, 1.0)
        return back[0, 0].cpu().numpy().astype(np.float32, copy=False)

    def predict(
        self, image: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None = None
    ) -> Prediction:
        """Probability, thresholded and cleaned mask; ``lungs`` restricts the mask if given."""
        prob = self.probability(image, affine)
        mask = prob >= self.options.threshold
        if lungs is not None and self.options.restrict_to_lungs:
            mask &= np.asarray(lungs) > 0
        mask = remove_small_components(
            mask, spacing_from_affine(affine), self.options.min_component_mm3
        )
        gated = self._below_gate(mask, lungs)
        if gated:
            mask[:] = False
        return Prediction(mask.astype(np.uint8), prob, None if lungs is None else lungs, gated)

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
