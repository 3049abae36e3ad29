"""The one predictor: native HU volume in, lesion probability and mask on the native grid.

Used by ``volseg predict``, fine-tuning validation, the lesion-presence gate's calibration
(:mod:`volseg.inference.validation`), and nothing else predicts. Steps (on the model's
device): the :class:`volseg.recipe.Recipe` (reorient + resample to the working spacing,
body crop, HU window), :func:`volseg.inference.sliding.sliding_window` (gaussian blending,
at ``precision``: autocast on GPU by default), optional flip TTA (all eight flips with
``uncertainty``), sigmoid, probability mapped back to the native grid, threshold,
restriction to the lung mask grown by ``lung_margin_mm`` (consolidation at the pleura is
soft-tissue dense and lies just outside an automatic lung mask), removal of small components
and of components that do not touch the lungs (one labelling,
:func:`volseg.inference.postprocess.keep_components`), the gate. The reported lungs are the
lung mask plus the lesion: involvement divides by lung that holds air and lung that lost it.
The output grid is the input grid by construction.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from volseg.inference.postprocess import keep_components, lesion_region
from volseg.inference.sliding import sliding_window
from volseg.inference.timing import PhaseTimes, span
from volseg.quantify import spacing_from_affine
from volseg.recipe import Recipe

if TYPE_CHECKING:
    from volseg.bundle import Bundle
    from volseg.data.lungs import LungMask

log = logging.getLogger(__name__)

DEFAULT_REVIEW_DISAGREEMENT = 0.5
"""``needs_review`` threshold when neither the bundle (chosen on validation) nor the user
gives one (:mod:`volseg.inference.review`)."""
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


@dataclass(frozen=True)
class PredictOptions:
    """The inference settings in force. No defaults here: :meth:`resolve` starts from
    :class:`volseg.config.PredictConfig`'s and the recipe's patch size (the ROI)."""

    roi_size: tuple[int, int, int]
    overlap: float
    sw_batch_size: int
    tta: bool
    precision: str
    threshold: float
    min_component_mm3: float
    min_involvement_pct: float
    restrict_to_lungs: bool
    lung_margin_mm: float
    consolidation_min_hu: float
    uncertainty: bool
    review_disagreement: float
    ood_check: bool
    ood_in_plane_margin_mm: float
    ood_slice_margin_mm: float
    ood_lung_hu_margin: float

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
        if values["review_disagreement"] is None:
            values["review_disagreement"] = DEFAULT_REVIEW_DISAGREEMENT
        return cls(**values)

    def ungated(self) -> PredictOptions:
        """The same settings without the lesion-presence gate and the uncertainty maps
        (validation, calibration): the mask ``predict`` makes before its gate."""
        return dataclasses.replace(self, min_involvement_pct=0.0, uncertainty=False)

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
    gated_involvement_pct: float | None = None  # what the gate emptied, % of the lungs
    uncertainty: np.ndarray | None = None  # float32: max - min probability over the flips
    disagreement: float | None = None  # 1 - |flips agreeing| / |any flip| on the lesion

    @property
    def gated(self) -> bool:
        """Lesions were found but below the lesion-presence gate: the mask was emptied."""
        return self.gated_involvement_pct is not None


@dataclass
class FlipProbabilities:
    """Native-grid probability over the flips (their mean) and its spread (min and max)."""

    mean: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    lung_shift_hu: float | None = None
    """How far the recipe's lung-density alignment moved this scan (HU); None: not aligned."""


class Predictor:
    """A segmentation network, its recipe and the settings; reuse it across scans.

    The network is not moved or switched to eval mode for good (validation runs it during
    training); each pass runs in eval mode on the network's own device. ``times``, when set,
    collects the seconds of the preprocess, network and postprocess phases
    (:mod:`volseg.inference.timing`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        recipe: Recipe,
        options: PredictOptions,
        times: PhaseTimes | None = None,
    ) -> None:
        self.model = model
        self.recipe = recipe
        self.options = options
        self.device = next(model.parameters()).device
        self.times = times
        self._warned = False  # the missing-lung-mask warning of an aligning recipe, once

    @classmethod
    def from_bundle(cls, bundle: Bundle, *layers: Mapping[str, Any] | None) -> Predictor:
        """A predictor for a loaded bundle: its recipe, its recorded settings, then ``layers``.
        The bundle's network is put in the device's inference layout
        (:func:`volseg.engine.device.inference_memory_format`); validation during training
        keeps the training layout, whose probabilities differ by float rounding (at most
        2.4e-7 on 22 scans, bench/README.md)."""
        from volseg.engine.device import inference_memory_format

        options = PredictOptions.resolve(bundle.recipe, bundle.predict_defaults, *layers)
        device = next(bundle.model.parameters()).device
        bundle.model.to(memory_format=inference_memory_format(device))
        return cls(bundle.model, bundle.recipe, options)

    def with_options(self, options: PredictOptions) -> Predictor:
        return Predictor(self.model, self.recipe, options, self.times)

    def probability(
        self, image: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None = None
    ) -> np.ndarray:
        """Lesion probability on the native grid of ``image`` (float32, same shape)."""
        return self.flip_probabilities(image, affine, lungs).mean

    @torch.inference_mode()
    def flip_probabilities(
        self, image: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None = None
    ) -> FlipProbabilities:
        """Probability on the native grid, the mean over the flips (``tta``; all eight with
        ``uncertainty``, which also keeps the per-voxel minimum and maximum over them).
        ``lungs``: the scan's lung mask, which a recipe that aligns lung density needs."""
        if self.recipe.lung_density_hu is not None and lungs is None and not self._warned:
            self._warned = True
            log.warning(
                "this model aligns lung density (data.lung_density_hu) but scans come without "
                "a lung mask: they go in as scanned (lung_density_shift_hu null in their JSON)"
            )
        with span(self.times, "preprocess"):
            working, x = self.recipe.apply(image, affine, self.device, lungs)
        with span(self.times, "network"):
            prob, low, high = self._flip_passes(x)
        with span(self.times, "postprocess"):
            return _native_flips(working, prob, low, high)

    def _flip_passes(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Sliding-window probability on the working grid, mean over the flips, and with
        ``uncertainty`` its per-voxel minimum and maximum over them."""
        opts = self.options
        flips = TTA_FLIPS if opts.tta or opts.uncertainty else ((),)
        prob = torch.zeros_like(x)
        low = torch.ones_like(x) if opts.uncertainty else None
        high = torch.zeros_like(x) if opts.uncertainty else None
        for dims in flips:
            xi = x.flip(dims) if dims else x
            logits = sliding_window(
                self.model,
                xi,
                opts.roi_size,
                overlap=opts.overlap,
                sw_batch_size=opts.sw_batch_size,
                precision=opts.precision,
            )
            p = torch.sigmoid(logits)
            p = p.flip(dims) if dims else p
            prob += p
            if low is not None and high is not None:
                torch.minimum(low, p, out=low)
                torch.maximum(high, p, out=high)
        prob /= len(flips)
        return prob, low, high

    def predict(
        self,
        image: np.ndarray,
        affine: np.ndarray,
        lungs: np.ndarray | None = None,
        region: np.ndarray | None = None,
    ) -> Prediction:
        """Probability, thresholded and cleaned mask; ``lungs`` restricts the mask if given.
        ``region``: :func:`region_for` ``lungs``, when the caller made it already
        (``volseg predict`` does, in its decode step, off the device's thread)."""
        return self.cleaned(self.flip_probabilities(image, affine, lungs), affine, lungs, region)

    def cleaned(
        self,
        flips: FlipProbabilities,
        affine: np.ndarray,
        lungs: np.ndarray | None,
        region: np.ndarray | None = None,
    ) -> Prediction:
        """Threshold, lung restriction, small-component removal, the gate, uncertainty: CPU
        work on the native grid, which ``volseg predict`` runs in its writer threads so
        that the device's thread goes on to the next scan's network."""
        with span(self.times, "postprocess", on_device=False):
            return self._cleaned(flips, affine, lungs, region)

    def _cleaned(
        self,
        flips: FlipProbabilities,
        affine: np.ndarray,
        lungs: np.ndarray | None,
        region: np.ndarray | None,
    ) -> Prediction:
        prob, opts = flips.mean, self.options
        spacing = spacing_from_affine(affine)
        if region is None:
            region = region_for(lungs, spacing, opts)
        mask, used = restrict_to_lungs(prob >= opts.threshold, lungs, spacing, opts, region)
        below = self._below_gate(mask, used)
        if below is not None:
            mask[:] = False
        result = Prediction(mask.astype(np.uint8), prob, used, below)
        if flips.low is not None and flips.high is not None:
            result.uncertainty = flips.high - flips.low
            result.disagreement = flip_disagreement(flips, lungs, spacing, opts, region)
        return result

    def _below_gate(self, mask: np.ndarray, lungs: np.ndarray | None) -> float | None:
        """The involvement (% of ``lungs``) of lesions that were found but fill less than
        ``min_involvement_pct`` of the lungs; None when the gate keeps the mask."""
        gate = self.options.min_involvement_pct
        if gate <= 0 or not mask.any():
            return None
        if lungs is None:
            log.warning("no lung mask: the lesion-presence gate (%.3f %%) is not applied", gate)
            return None
        n_lungs = int(np.count_nonzero(lungs))
        if n_lungs == 0:
            return None
        involvement = 100.0 * float(np.count_nonzero(mask)) / n_lungs
        return involvement if involvement < gate else None


def _native_flips(
    working: Any, prob: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None
) -> FlipProbabilities:
    """The working-grid probabilities mapped back to the native grid, clamped to [0, 1]."""

    def native(values: torch.Tensor) -> np.ndarray:
        back = working.to_native(values).clamp_(0.0, 1.0)
        return back[0, 0].cpu().numpy().astype(np.float32, copy=False)

    shift = working.lung_shift_hu
    if low is None or high is None:
        return FlipProbabilities(native(prob), lung_shift_hu=shift)
    return FlipProbabilities(native(prob), native(low), native(high), shift)


def region_for(
    lungs: np.ndarray | None, spacing: Sequence[float], options: PredictOptions
) -> np.ndarray | None:
    """Where ``options`` keep lesions in a scan with ``lungs`` (voxels of ``spacing`` mm):
    the lungs grown by ``lung_margin_mm`` (:func:`volseg.inference.postprocess.lesion_region`);
    None without lungs or with ``restrict_to_lungs`` off."""
    if lungs is None or not options.restrict_to_lungs:
        return None
    return lesion_region(lungs, spacing, options.lung_margin_mm)


def restrict_to_lungs(
    mask: np.ndarray,
    lungs: np.ndarray | None,
    spacing: Sequence[float],
    options: PredictOptions,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Thresholded ``mask`` cleaned and kept near the lungs, and the lungs it is measured in.

    Inside the lungs grown by ``lung_margin_mm`` (``region``, when already made from these
    lungs), components of at least ``min_component_mm3`` that touch the lungs; the lungs
    returned are ``lungs`` plus that lesion (uint8), or None without a lung mask (or with
    ``restrict_to_lungs`` off, the lung mask as given).
    """
    mask = np.asarray(mask, dtype=bool)
    use = lungs is not None and options.restrict_to_lungs
    if use:
        if region is None:
            region = region_for(lungs, spacing, options)
        mask = mask & region
    if not use:
        mask = keep_components(mask, spacing, options.min_component_mm3)
        return mask, None if lungs is None else np.asarray(lungs, dtype=np.uint8)
    inside = np.asarray(lungs) > 0
    mask = keep_components(mask, spacing, options.min_component_mm3, touching=inside)
    return mask, (inside | mask).astype(np.uint8)


def flip_disagreement(
    flips: FlipProbabilities,
    lungs: np.ndarray | None,
    spacing: Sequence[float],
    options: PredictOptions,
    region: np.ndarray | None = None,
) -> float:
    """How much the flipped predictions disagree on the lesion: 1 - |voxels every flip
    calls lesion| / |voxels some flip calls lesion|, each cleaned as the mask is (0 when no
    flip finds a lesion). High on a scan whose lesions the model is unsure of. ``region``:
    as for :func:`restrict_to_lungs`."""
    if flips.low is None or flips.high is None:
        raise ValueError("flip_disagreement needs the minimum and maximum over the flips")
    low, high = flips.low >= options.threshold, flips.high >= options.threshold
    every, _ = restrict_to_lungs(low, lungs, spacing, options, region)
    some, _ = restrict_to_lungs(high, lungs, spacing, options, region)
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
