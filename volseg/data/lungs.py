"""Lung masks of chest CT in Hounsfield units, by anatomy and physical units, no training.

Every stage leans on the lung mask: the GAN works inside it, predicted lesions are
restricted to it, and % involvement and the CT grade divide by it. It must therefore hold
on any chest CT: whole chest or lung bases, a field of view that cuts the body, 0.5-8 mm
slices, any orientation, any padding outside the scan circle, a table or none.

The method works on a grid of about ``grid_mm`` (:mod:`volseg.data.lung_grid`) with the
scan reoriented by its affine, and every setting is in HU, mm or mL:

1. native voxels are averaged in blocks (padding below ``air_floor_hu`` counts as air);
2. air (< ``threshold_hu``) is split into 3D components and each is judged by anatomy
   (:mod:`volseg.data.lung_air`): outside air, gut gas and the pure-air trachea and main
   bronchi are set apart from aerated lung, which is tissue mixed with air;
3. the lungs are the lung-like components, grouped when closer than ``satellite_mm``
   (pieces of one lung): the largest group and any other at least
   ``second_lung_fraction`` of it;
   two lungs that touch are split at their junction, so each lung is filled on its own;
4. each lung gets back its vessels, nodules and lesions (:mod:`volseg.data.lung_fill`):
   closing and hole filling, hull dents that hold ground glass, and in extensive disease,
   growth into consolidation inside the bony thorax;
5. the mask returns to native voxels through a soft boundary (:class:`CoarseGrid`), so
   its edge follows the native -400 HU crossing, not the coarse voxels.

Per-scan QC (:class:`LungMask`): right and left lung volume in mL, whether the lungs are cut
by the field of view, and warnings for implausible results. Settings:
:mod:`volseg.data.lung_params`; files and SimpleITK images: :mod:`volseg.data.lung_files`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from volseg.data.lung_fill import LEFT, RIGHT, ball_mm
from volseg.data.lung_grid import AxisOrder, CoarseGrid
from volseg.data.lung_params import LungParams
from volseg.errors import InputError
from volseg.quantify import spacing_from_affine

log = logging.getLogger(__name__)


@dataclass
class LungMask:
    """A lung mask in the input's voxel order, with its per-scan QC."""

    mask: np.ndarray  # uint8 0/1, same shape and voxel order as the input
    right_ml: float
    left_ml: float
    cut_by_fov: list[str] = field(default_factory=list)  # "top", "bottom", "side"
    warnings: list[str] = field(default_factory=list)
    sides: np.ndarray | None = None  # uint8 0 / RIGHT / LEFT per voxel (0: edge, unassigned)

    @property
    def total_ml(self) -> float:
        return self.right_ml + self.left_ml

    @classmethod
    def of_mask(
        cls, mask: np.ndarray, hu: np.ndarray, affine: np.ndarray, params: LungParams | None = None
    ) -> LungMask:
        """QC of a lung mask made elsewhere (``--lungs``) for the CT ``hu``: its sides are
        split as :func:`lung_mask` splits them (at the spine, or at a junction)."""
        p = params or LungParams()
        view = _CoarseView.of(hu, affine, p)
        lungs = view.order.forward(view.grid.pool(np.asarray(mask) > 0)) > 0.5
        sides = _split_sides(
            np.ascontiguousarray(lungs), view.spacing, _midline_x(view.hu, view.spacing, p)
        )
        return view.with_qc(mask, sides, p)

    def side_shares(self, voxels: np.ndarray) -> tuple[float, float]:
        """How many of ``voxels`` (a boolean mask) lie in the right and the left lung; voxels
        with no side (edge voxels, lesion outside the mask) are shared pro rata."""
        voxels = np.asarray(voxels) > 0
        if self.sides is None:
            raise ValueError("this lung mask carries no side map")
        counts = np.bincount(self.sides[voxels], minlength=3).astype(np.float64)
        total = float(voxels.sum())
        known = counts[RIGHT] + counts[LEFT]
        share = counts[RIGHT] / known if known else self.right_ml / max(self.total_ml, 1e-9)
        return total * share, total * (1.0 - share)

    def qc(self) -> dict[str, object]:
        """JSON-ready QC record (volumes rounded to 0.1 mL)."""
        return {
            "right_lung_ml": round(self.right_ml, 1),
            "left_lung_ml": round(self.left_ml, 1),
            "lungs_cut_by_fov": list(self.cut_by_fov),
            "lung_warnings": list(self.warnings),
        }


def lung_mask(hu: np.ndarray, affine: np.ndarray, params: LungParams | None = None) -> LungMask:
    """Lung mask of a CT volume ``hu`` (nibabel voxel order, RAS ``affine``) with its QC."""
    p = params or LungParams()
    view = _CoarseView.of(hu, affine, p)
    sides, air_hu = _find_lungs(view.hu, view.spacing, p)
    soft = _boundary_soft(view.hu, sides > 0, p.threshold_hu, air_hu)
    mask = view.grid.upsample_soft(np.ascontiguousarray(view.order.backward(soft)))
    return view.with_qc(mask, sides, p)


@dataclass
class _CoarseView:
    """A scan on the coarse anatomical grid, and the way back to native voxels."""

    order: AxisOrder
    grid: CoarseGrid
    hu: np.ndarray  # coarse HU, anatomical order (z, y, x)
    spacing: tuple[float, float, float]
    voxel_ml: float  # native voxel

    @classmethod
    def of(cls, hu: np.ndarray, affine: np.ndarray, p: LungParams) -> _CoarseView:
        if hu.ndim != 3:
            raise InputError(f"expected a 3D image, got {hu.ndim}D")
        order = AxisOrder.from_affine(affine)
        native = spacing_from_affine(affine)
        grid = CoarseGrid.plan(hu.shape, native, p.grid_mm)
        coarse = np.ascontiguousarray(order.forward(grid.pool(hu, floor=p.air_floor_hu)))
        return cls(order, grid, coarse, order.spacing(grid.spacing), float(np.prod(native)) / 1e3)

    def with_qc(self, mask: np.ndarray, sides: np.ndarray, p: LungParams) -> LungMask:
        """The native ``mask`` with per-side volumes from the coarse side map."""
        mask = np.asarray(mask) > 0
        native_sides = self.grid.upsample_nearest(self.order.backward(sides))
        counts = np.bincount(native_sides[mask], minlength=3).astype(np.float64)
        # Edge voxels whose coarse block is outside the side map go to the sides pro rata.
        total = float(mask.sum()) * self.voxel_ml
        share = counts[RIGHT] / max(counts[RIGHT] + counts[LEFT], 1.0)
        result = LungMask(
            mask=mask.astype(np.uint8),
            right_ml=total * share,
            left_ml=total * (1.0 - share) if counts[LEFT] > 0 else 0.0,
            cut_by_fov=_cut_faces(sides > 0),
            sides=np.where(mask, native_sides, 0).astype(np.uint8),
        )
        result.warnings = _qc_warnings(result, p)
        return result


def _find_lungs(
    hu: np.ndarray, spacing: tuple[float, float, float], p: LungParams
) -> tuple[np.ndarray, float]:
    """Coarse side map (0, RIGHT, LEFT) of the filled lungs, and the scanner's air HU."""
    from volseg.data.lung_air import (
        air_components,
        central_airways,
        lung_like,
        pure_air_hu,
    )
    from volseg.data.lung_fill import fill_lung, grow_into_lesions

    air = hu < p.threshold_hu
    comps = air_components(air, hu, spacing, p.threshold_hu)
    air_hu = pure_air_hu(comps, hu)
    like = lung_like(comps, air_hu, p)
    like &= ~_outside_thorax(comps, like, hu, spacing, p)
    outside_ids = 1 + np.nonzero(comps.touches_side & ~like)[0]
    candidate = air & ~np.isin(comps.labels, outside_ids)
    airway = central_airways(hu, candidate, spacing, air_hu, p)
    inner = air_components(candidate & ~airway, hu, spacing, p.threshold_hu)
    chosen = _select_lungs(inner, lung_like(inner, air_hu, p), spacing, p)
    lungs = np.isin(inner.labels, chosen) if chosen.size else np.zeros_like(air)
    sides = np.zeros(hu.shape, dtype=np.uint8)
    if not lungs.any():
        return sides, air_hu
    midline = _midline_x(hu, spacing, p)
    split = _split_sides(lungs, spacing, midline)
    for side in (RIGHT, LEFT):
        if (split == side).any():
            filled = fill_lung(split == side, hu, spacing, p)
            sides[filled & (sides == 0)] = side
    sides = grow_into_lesions(sides, hu, (candidate & ~lungs) | airway, spacing, midline, p)
    log.debug("pure air %.0f HU; lungs: %d coarse voxels", air_hu, int((sides > 0).sum()))
    return sides, air_hu


def _outside_thorax(
    comps, like: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], p: LungParams
) -> np.ndarray:
    """Per component: lung-like, reaching the side of the field of view, and mostly outside
    the bony thorax (less than ``cut_lung_in_thorax`` of its voxels inside the per-slice hull
    of the bones, counted on slices whose hull spans at least ``thorax_min_mm2``). A lung
    cut by the field of view lies inside its ribs; a foam pad under the patient lies behind
    the spine. A component with most of its voxels on slices without such a hull (a field of
    view that shows no rib cage) is not judged: there is nothing to judge it by."""
    from volseg.data.lung_fill import body_bone, bony_hull

    suspects = np.nonzero(like & comps.touches_side)[0]
    out = np.zeros(comps.count, dtype=bool)
    if suspects.size == 0:
        return out
    hull = bony_hull(body_bone(hu, p))
    hull_mm2 = hull.sum(axis=(1, 2)) * spacing[1] * spacing[2]
    hull &= (hull_mm2 >= p.thorax_min_mm2)[:, None, None]
    with_bone = np.broadcast_to(hull.any(axis=(1, 2))[:, None, None], hull.shape)
    n = comps.count + 1
    total = np.bincount(comps.labels.ravel(), minlength=n)[1:]
    judged = np.bincount(comps.labels[with_bone], minlength=n)[1:]
    inside = np.bincount(comps.labels[hull], minlength=n)[1:]
    for k in suspects:
        if judged[k] >= 0.5 * total[k] and inside[k] < p.cut_lung_in_thorax * judged[k]:
            out[k] = True
            log.debug(
                "component %d (%.0f mL): outside the bony thorax, not lung",
                k + 1,
                comps.volume_ml[k],
            )
    return out


def _select_lungs(comps, like: np.ndarray, spacing: tuple[float, float, float], p: LungParams):
    """Ids of the lung components.

    Lung-like components closer than ``satellite_mm`` are grouped (single linkage): the
    pieces of a lung that a fissure, thick slices or consolidation break up count as one.
    The largest group is a lung, and so is any group at least ``second_lung_fraction`` of
    it; a small lung-like blob far from both (a bowel bubble seen at low resolution) is not.
    """
    ids = np.nonzero(like)[0] + 1
    if ids.size == 0:
        return ids
    candidate = np.isin(comps.labels, ids)
    nz = np.nonzero(candidate)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    labels = comps.labels[box]
    if p.satellite_mm > 0:
        near = ndi.binary_dilation(candidate[box], ball_mm(p.satellite_mm / 2.0, spacing))
        groups, _ = ndi.label(near)
    else:
        groups = np.where(candidate[box], labels, 0)
    member = candidate[box]
    group_of = np.zeros(comps.count + 1, dtype=np.int64)
    group_of[labels[member]] = groups[member]
    volume = np.bincount(group_of[ids], weights=comps.volume_ml[ids - 1])
    keep = np.nonzero(volume >= p.second_lung_fraction * volume.max())[0]
    return ids[np.isin(group_of[ids], keep[keep > 0])]


def _midline_x(hu: np.ndarray, spacing: tuple[float, float, float], p: LungParams) -> float:
    """Column (x index) of the body's midline: the spine, the one bone present in every
    slice, or the middle of the body when too little bone is in view."""
    body = hu >= p.threshold_hu
    labels, n = ndi.label(body)
    if n > 1:
        body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    bone = (hu > p.bone_hu) & body
    if bone.sum() * np.prod(spacing) >= 20_000.0:  # >= 20 mL of bone
        column = ndi.gaussian_filter(
            bone.sum(axis=0).astype(np.float32), [8.0 / spacing[1], 8.0 / spacing[2]]
        )
        return float(np.unravel_index(np.argmax(column), column.shape)[1])
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    return 0.5 * (xs[0] + xs[-1]) if xs.size else 0.5 * hu.shape[2]


def _split_sides(
    lungs: np.ndarray, spacing: tuple[float, float, float], midline: float
) -> np.ndarray:
    """Side map of the aerated lungs; a component spanning both sides (the lungs touch at
    a junction) is split by eroding it until it falls apart into a right and a left core."""
    labels, n = ndi.label(lungs)
    xs = np.arange(lungs.shape[2])[None, None, :]
    right_side = np.broadcast_to(xs < midline, lungs.shape)
    out = np.zeros(lungs.shape, dtype=np.uint8)
    for k in range(1, n + 1):
        comp = labels == k
        share = float((comp & right_side).sum()) / float(comp.sum())
        if min(share, 1.0 - share) < 0.1:
            out[comp] = RIGHT if share >= 0.5 else LEFT
            continue
        out[comp] = _split_component(comp, spacing, right_side)
    return out


def _split_component(
    comp: np.ndarray, spacing: tuple[float, float, float], right_side: np.ndarray
) -> np.ndarray:
    nz = np.nonzero(comp)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    c, rs = comp[box], right_side[box]
    depth = ndi.distance_transform_edt(c, sampling=spacing)
    for radius in np.arange(2.0, 40.0, 2.0):
        cores, m = ndi.label(depth > radius)
        if m < 2:
            continue
        sizes = np.bincount(cores.ravel())[1:]
        right = [k + 1 for k in range(m) if (rs[cores == k + 1]).mean() >= 0.5]
        left = [k + 1 for k in range(m) if k + 1 not in right]
        if not right or not left:
            continue
        r_size = max(sizes[k - 1] for k in right)
        l_size = max(sizes[k - 1] for k in left)
        if min(r_size, l_size) < 0.1 * max(r_size, l_size):
            continue
        seeds = np.zeros(c.shape, dtype=np.uint8)
        seeds[np.isin(cores, right)] = RIGHT
        seeds[np.isin(cores, left)] = LEFT
        _, idx = ndi.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
        nearest = seeds[tuple(idx)]
        out = np.zeros(comp.shape, dtype=np.uint8)
        out[box] = np.where(c, nearest, 0)
        return out[comp]
    return np.where(rs, RIGHT, LEFT).astype(np.uint8)[c]


def _boundary_soft(
    hu: np.ndarray, lungs: np.ndarray, threshold_hu: float, air_hu: float
) -> np.ndarray:
    """Coarse field whose 0.5 level, interpolated, is the lung edge.

    Near the edge the field is affine in HU with 0.5 at ``threshold_hu``, so the
    interpolated crossing sits where the block-averaged HU crosses the threshold; lung
    tissue denser than that (vessels, lesions) counts 1, other air (airways, gas) 0.
    """
    span = 2.0 * max(threshold_hu - air_hu, 100.0)
    soft = np.clip(0.5 + (threshold_hu - hu) / span, 0.0, 1.0).astype(np.float32)
    dense = hu >= threshold_hu
    soft[lungs & dense] = 1.0
    soft[~lungs & ~dense] = 0.0
    soft[ndi.binary_erosion(lungs)] = 1.0
    return soft


def _cut_faces(lungs: np.ndarray) -> list[str]:
    """Faces of the field of view the lungs reach (anatomical order arrays)."""
    faces = []
    if lungs[-1].any():
        faces.append("top")
    if lungs[0].any():
        faces.append("bottom")
    if lungs[:, 0].any() or lungs[:, -1].any() or lungs[:, :, 0].any() or lungs[:, :, -1].any():
        faces.append("side")
    return faces


def _qc_warnings(result: LungMask, p: LungParams) -> list[str]:
    """Warnings for an implausible lung mask (the caller logs them with the file name)."""
    out = []
    if result.cut_by_fov:
        out.append(
            "lungs cut by the field of view (" + ", ".join(result.cut_by_fov) + "): "
            "volumes and involvement cover only the part in view"
        )
    whole = not result.cut_by_fov
    small = min(result.right_ml, result.left_ml)
    if "side" not in result.cut_by_fov and small < 0.05 * max(result.total_ml, 1e-6):
        missing = "right" if result.right_ml < result.left_ml else "left"
        out.append(f"{missing} lung not found ({small:.0f} mL)")
    if whole and result.total_ml < p.min_total_ml:
        out.append(f"lung volume {result.total_ml:.0f} mL is below {p.min_total_ml:.0f} mL")
    if result.total_ml > p.max_total_ml:
        out.append(f"lung volume {result.total_ml:.0f} mL is above {p.max_total_ml:.0f} mL")
    return out
