"""Is a scan like the ones the model was trained on? The out-of-distribution check.

Fine-tuning stores in the model bundle what the training split's scans look like
(:func:`training_stats`): the range of their native voxel spacing, in-plane and between
slices (mm), and over the scans the spread of HU percentiles inside their lung masks (the
masks ``prepare`` made, HU clipped to the preprocessing window). ``predict`` measures the
same on each scan, on its native grid (:func:`scan_features`), and :func:`check_scan` gives
every way the scan lies outside the training range by more than the ``predict.ood_*``
margins, in mm and HU. A flagged scan's volumes and CT grade are still reported, with the
reasons beside them: a network trained on 10 mm slices of one scanner says little about a
0.7 mm scan of another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STATS_VERSION = 1
PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
"""Lung HU percentiles recorded per training scan (their spread over scans is stored)."""
CHECKED_PERCENTILES = (10, 50)
"""Those a new scan is checked on: the 10th follows the aerated lung (scanner, dose,
inspiration, slice thickness) and hardly moves with lesions; the median also follows the
lesion burden, which the training scans' range covers when they span CT-0 to CT-3."""
PERCENTILE_NAMES = {10: "10th percentile", 50: "median"}
UNAVAILABLE = (
    "the model bundle holds no training statistics (made before volseg recorded them); "
    "re-run the finetune stage to enable the check"
)


@dataclass(frozen=True)
class ScanFeatures:
    """What the check compares: voxel spacing (mm) and lung HU percentiles of one scan."""

    in_plane_mm: tuple[float, float]
    slice_mm: float
    lung_hu: dict[int, float] | None
    """HU percentiles (:data:`PERCENTILES`) inside the lung mask; None without one."""

    def to_json(self) -> dict[str, Any]:
        return {
            "in_plane_mm": [round(v, 3) for v in self.in_plane_mm],
            "slice_mm": round(self.slice_mm, 3),
            "lung_hu_percentiles": None
            if self.lung_hu is None
            else {str(q): round(v, 1) for q, v in self.lung_hu.items()},
        }


@dataclass(frozen=True)
class OodMargins:
    """How far outside the training range a scan may lie before it is flagged."""

    in_plane_mm: float
    slice_mm: float
    lung_hu: float

    @classmethod
    def of(cls, options: Any) -> OodMargins:
        """From :class:`volseg.inference.predictor.PredictOptions` (``ood_*`` fields)."""
        return cls(
            float(options.ood_in_plane_margin_mm),
            float(options.ood_slice_margin_mm),
            float(options.ood_lung_hu_margin),
        )


def grid_spacing(affine: np.ndarray) -> tuple[tuple[float, float], float]:
    """In-plane spacings and slice spacing (mm) of a grid, whatever its voxel order: the
    slice axis is the voxel axis that points most along the patient's head-foot axis."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(m, axis=0)
    along_z = np.abs(m[2]) / np.maximum(lengths, 1e-12)
    k = int(np.argmax(along_z))
    a, b = (float(lengths[j]) for j in range(3) if j != k)
    return (min(a, b), max(a, b)), float(lengths[k])


def lung_hu_percentiles(
    hu: np.ndarray, lungs: np.ndarray | None, hu_window: Sequence[float]
) -> dict[int, float] | None:
    """HU percentiles inside ``lungs``, clipped to ``hu_window`` as the network sees it."""
    if lungs is None:
        return None
    inside = np.asarray(hu)[np.asarray(lungs) > 0]
    if inside.size == 0:
        return None
    lo, hi = float(hu_window[0]), float(hu_window[1])
    values = np.percentile(np.clip(inside.astype(np.float32, copy=False), lo, hi), PERCENTILES)
    return {q: float(v) for q, v in zip(PERCENTILES, values, strict=True)}


def scan_features(
    hu: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None, hu_window: Sequence[float]
) -> ScanFeatures:
    """The features of one native scan (HU array, affine, lung mask or None)."""
    in_plane, slice_mm = grid_spacing(affine)
    return ScanFeatures(in_plane, slice_mm, lung_hu_percentiles(hu, lungs, hu_window))


def training_stats(
    spacings: Sequence[tuple[tuple[float, float], float]],
    lung_hu: Sequence[dict[int, float]],
    hu_window: Sequence[float],
) -> dict[str, Any]:
    """The bundle's record of the training scans (JSON-able): the ranges of their in-plane
    and slice spacing (``spacings``: :func:`grid_spacing` of each), and for each lung HU
    percentile its mean, standard deviation and range over the scans in ``lung_hu``."""
    if not spacings:
        raise ValueError("training_stats needs at least one scan")
    in_plane = [v for s in spacings for v in s[0]]
    slices = [s[1] for s in spacings]
    lung: dict[str, Any] | None = None
    if lung_hu:
        lung = {}
        for q in PERCENTILES:
            values = np.array([p[q] for p in lung_hu], dtype=np.float64)
            lung[str(q)] = {
                "mean": round(float(values.mean()), 1),
                "sd": round(float(values.std()), 1),
                "min": round(float(values.min()), 1),
                "max": round(float(values.max()), 1),
            }
    return {
        "version": STATS_VERSION,
        "n_scans": len(spacings),
        "in_plane_mm": [round(min(in_plane), 4), round(max(in_plane), 4)],
        "slice_mm": [round(min(slices), 4), round(max(slices), 4)],
        "lung_hu_scans": len(lung_hu),
        "lung_hu_percentiles": lung,
        "hu_window": [float(v) for v in hu_window],
    }


def _outside(value: float, low: float, high: float, margin: float) -> bool:
    return value < low - margin or value > high + margin


def _range(low: float, high: float, unit: str, digits: int) -> str:
    if round(low, digits) == round(high, digits):
        return f"{low:.{digits}f} {unit}"
    return f"{low:.{digits}f} to {high:.{digits}f} {unit}"


def unavailable(note: str = UNAVAILABLE) -> dict[str, Any]:
    """The ``out_of_distribution`` block when no check was made, and why."""
    return {"available": False, "flagged": None, "reasons": [], "note": note}


def check_scan(
    stats: dict[str, Any] | None, features: ScanFeatures, margins: OodMargins
) -> dict[str, Any]:
    """The ``out_of_distribution`` block of a scan's JSON: ``flagged``, the ``reasons``
    (each naming the scan's value and the training range), what was measured; with no
    ``stats`` (an older bundle) the check is ``available: false``."""
    if not stats:
        return unavailable()
    reasons: list[str] = []
    lo, hi = stats["in_plane_mm"]
    if any(_outside(v, lo, hi, margins.in_plane_mm) for v in features.in_plane_mm):
        shown = " × ".join(f"{v:.2f}" for v in features.in_plane_mm)
        reasons.append(
            f"in-plane spacing {shown} mm outside training {_range(lo, hi, 'mm', 2)}"
            f" (± {margins.in_plane_mm:g} mm)"
        )
    lo, hi = stats["slice_mm"]
    if _outside(features.slice_mm, lo, hi, margins.slice_mm):
        reasons.append(
            f"slice spacing {features.slice_mm:.2f} mm outside training "
            f"{_range(lo, hi, 'mm', 2)} (± {margins.slice_mm:g} mm)"
        )
    lung = stats.get("lung_hu_percentiles")
    not_checked: list[str] = []
    if lung is None or features.lung_hu is None:
        not_checked.append("lung HU (no lung mask)")
    else:
        for q in CHECKED_PERCENTILES:
            value, train = features.lung_hu[q], lung[str(q)]
            if _outside(value, train["min"], train["max"], margins.lung_hu):
                reasons.append(
                    f"lung HU {PERCENTILE_NAMES[q]} {value:.0f} vs training "
                    f"{train['mean']:.0f} ± {train['sd']:.0f} (range "
                    f"{_range(train['min'], train['max'], 'HU', 0)}, ± {margins.lung_hu:g} HU)"
                )
    return {
        "available": True,
        "flagged": bool(reasons),
        "reasons": reasons,
        "scan": features.to_json(),
        "not_checked": not_checked,
    }


def report_flagged(flagged: Sequence[str], total: int) -> None:
    """One console warning for the run: how many scans were flagged, and which."""
    if flagged:
        log.warning(
            "%d of %d scan(s) lie outside the model's training distribution (reasons in "
            "out_of_distribution of their JSON): %s",
            len(flagged),
            total,
            ", ".join(flagged),
        )
