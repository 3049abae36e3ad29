"""Air inside a chest CT sorted by anatomy: outside air, gut gas, airways and the lungs.

Works on the coarse anatomical grid of :mod:`volseg.data.lung_grid` (arrays ``(z, y, x)``,
inferior -> superior, anterior -> posterior, right -> left; spacing in mm). Every 3D air
component is judged by what it contains, not by its rank:

- aerated lung is tissue and air mixed (about -870 HU, with vessels), so even its darkest
  tenth stays well above pure air; bowel and stomach gas, airway lumens and the air around
  the patient have a core of pure air (the scanner's air value, measured on the scan);
- severe emphysema darkens a lung towards pure air, but a component that large (mL) with a
  median above pure air is still lung;
- air that reaches the side of the field of view is outside air unless it is lung-like, so
  a lung cut by a small field of view is kept.

The trachea and main bronchi are pure-air tubes grown from a seed in the upper chest and
removed before the lungs are chosen, so they neither join the two lungs nor count as lung
(reference lung masks exclude them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from volseg.data.lung_params import LungParams

log = logging.getLogger(__name__)

_HIST_LO, _HIST_BIN = -1100.0, 5.0  # HU histogram of air components: -1100 .. threshold


@dataclass
class AirComponents:
    """3D air components with the statistics the anatomy is judged on."""

    labels: np.ndarray  # int32 component index, 0 = not air
    volume_ml: np.ndarray  # per component (index k at position k - 1)
    p10: np.ndarray  # 10th percentile HU
    median: np.ndarray
    touches_side: np.ndarray  # bool: reaches a side (not top or bottom) of the field of view

    @property
    def count(self) -> int:
        return int(self.volume_ml.size)


def air_components(
    air: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], threshold_hu: float
) -> AirComponents:
    """Label the air and summarise each component (volume, HU quantiles, border contact)."""
    labels, n = ndi.label(air)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if n == 0:
        empty = np.zeros(0)
        return AirComponents(labels, empty, empty, empty, np.zeros(0, dtype=bool))
    keep = labels > 0
    lab = labels[keep].astype(np.int64)
    nbins = int(np.ceil((threshold_hu - _HIST_LO) / _HIST_BIN)) + 1
    bins = np.clip(((hu[keep] - _HIST_LO) / _HIST_BIN).astype(np.int64), 0, nbins - 1)
    hist = np.bincount(lab * nbins + bins, minlength=(n + 1) * nbins).reshape(n + 1, nbins)[1:]
    counts = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)

    def quantile(q: float) -> np.ndarray:
        idx = np.argmax(cum >= np.maximum(q * counts, 1)[:, None], axis=1)
        return _HIST_LO + (idx + 0.5) * _HIST_BIN

    side = np.zeros(n + 1, dtype=bool)
    for face in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        side[np.unique(face)] = True
    return AirComponents(
        labels=labels,
        volume_ml=counts * voxel_ml,
        p10=quantile(0.10),
        median=quantile(0.5),
        touches_side=side[1:],
    )


def pure_air_hu(comps: AirComponents, hu: np.ndarray) -> float:
    """The scanner's air value on this scan: median HU of the largest outside-air component
    (about -1000, -1012 on some scanners), or -1000 when no outside air is in view."""
    outside = np.nonzero(comps.touches_side & (comps.median < -950.0))[0]
    if outside.size == 0:
        return -1000.0
    k = outside[np.argmax(comps.volume_ml[outside])]
    if comps.volume_ml[k] < 5.0:
        return -1000.0
    return float(comps.median[k])


def lung_like(comps: AirComponents, air_hu: float, p: LungParams) -> np.ndarray:
    """Per component: does it hold aerated lung (tissue mixed with air) rather than gas?"""
    mixed = comps.p10 >= air_hu + p.lung_p10_margin_hu
    emphysema = (comps.median >= air_hu + p.lung_p10_margin_hu) & (
        comps.volume_ml >= p.emphysema_min_ml
    )
    return (mixed | emphysema) & (comps.volume_ml >= p.min_component_ml)


def central_airways(
    hu: np.ndarray,
    candidate: np.ndarray,
    spacing: tuple[float, float, float],
    air_hu: float,
    p: LungParams,
) -> np.ndarray:
    """Trachea and main bronchi: the pure-air tube grown from a tracheal cross-section.

    A seed is a compact air region of its own in an axial slice (``airway_area_mm2``) with
    a pure-air lumen, closest to the middle of the air in view; the tube is the 3D pure-air (``air_hu + airway_margin_hu``) region connected to it
    (26-connected: thick slices cut an oblique bronchus into diagonal steps). Deep
    bronchi are thinner than the grid, so their averaged lumen is not pure air and growth
    stops near the hilum; the tube takes its partial-volume wall (``airway_wall_mm``). A tube larger than ``airway_max_ml`` leaked into emphysematous
    lung and is cut back to its slices above the first leak.
    """
    lumen = candidate & (hu < air_hu + p.airway_margin_hu)
    if not lumen.any():
        return np.zeros_like(candidate)
    seed = _trachea_seed(lumen, candidate, spacing, p)
    if seed is None:
        return np.zeros_like(candidate)
    labels, _ = ndi.label(lumen, structure=np.ones((3, 3, 3), dtype=bool))
    tree = labels == labels[seed]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if tree.sum() * voxel_ml > p.airway_max_ml:
        # Keep the slices from the top down to where the tube's area explodes.
        area = tree.sum(axis=(1, 2)) * spacing[1] * spacing[2]
        z = seed[0]
        while z > 0 and area[z - 1] <= 2.5 * p.airway_area_mm2[1]:
            z -= 1
        tree[:z] = False
        log.debug("airway tree leaked; kept slices %d and above", z)
    # The lumen's partial-volume wall is air too: take it with the tube, or it would stay
    # behind as a lung-like ring around a hole.
    ring = max(1, int(round(p.airway_wall_mm / min(spacing[1:]))))
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndi.generate_binary_structure(2, 1)
    return ndi.binary_dilation(tree, plane, iterations=ring, mask=candidate)


def _trachea_seed(
    lumen: np.ndarray,
    candidate: np.ndarray,
    spacing: tuple[float, float, float],
    p: LungParams,
) -> tuple[int, int, int] | None:
    """A pure-air voxel of the best tracheal cross-section, searching from the top slice.

    In an axial slice the trachea is an air region of its own (its partial-volume wall
    included), compact, of tracheal area, with a pure-air lumen, near the middle of the
    air in view.
    """
    pixel_mm2 = spacing[1] * spacing[2]
    lo, hi = (a / pixel_mm2 for a in p.airway_area_mm2)
    cols = np.nonzero(candidate.any(axis=(0, 1)))[0]
    if cols.size == 0:
        return None
    mid_x = 0.5 * (cols[0] + cols[-1])
    for z in range(lumen.shape[0] - 1, -1, -1):
        if not lumen[z].any():
            continue
        labels, n = ndi.label(candidate[z])
        area = np.bincount(labels.ravel(), minlength=n + 1)
        core = np.bincount(labels[lumen[z]], minlength=n + 1)
        best: tuple[float, tuple[int, int, int]] | None = None
        for k in np.nonzero((area >= lo) & (area <= 1.5 * hi) & (core >= 0.3 * lo))[0]:
            if k == 0:
                continue
            ys, xs = np.nonzero(labels == k)
            if area[k] < 0.5 * (np.ptp(ys) + 1) * (np.ptp(xs) + 1):  # not compact
                continue
            offset = abs(float(xs.mean()) - mid_x) * spacing[2]
            if offset > p.airway_offset_mm or (best is not None and offset >= best[0]):
                continue
            inner = np.argwhere((labels == k) & lumen[z])
            centre = inner[np.argmin(((inner - inner.mean(axis=0)) ** 2).sum(axis=1))]
            best = (offset, (z, int(centre[0]), int(centre[1])))
        if best is not None:
            return best[1]
    return None
