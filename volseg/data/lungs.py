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
by the field of view, and warnings for implausible results.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from volseg.data.lung_fill import LEFT, RIGHT, ball_mm
from volseg.data.lung_grid import AxisOrder, CoarseGrid
from volseg.errors import ConfigError, InputError
from volseg.quantify import spacing_from_affine

if TYPE_CHECKING:
    import SimpleITK as sitk

log = logging.getLogger(__name__)

# ITK works in LPS, NIfTI affines are RAS: flip the first two axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class LungParams:
    """Settings of :func:`lung_mask`, all in physical units (HU, mm, mL)."""

    grid_mm: float = 2.0
    """Working grid: native voxels are averaged in blocks of about this size (mm)."""
    air_floor_hu: float = -1024.0
    """Values below this (scan-circle padding: -2048, -3024) are taken as air."""
    threshold_hu: float = -400.0
    """Voxels below this are air or aerated lung."""
    min_component_ml: float = 0.1
    """Air components smaller than this are never lung."""
    lung_p10_margin_hu: float = 60.0
    """Aerated lung: its darkest tenth stays at least this far above the scanner's air."""
    emphysema_min_ml: float = 500.0
    """A component this large whose median is lung-like is lung even if partly pure air."""
    second_lung_fraction: float = 0.1
    """Keep another group of lung-like components if at least this share of the largest."""
    satellite_mm: float = 10.0
    """Lung-like components this close to each other are pieces of one lung (one group)."""
    airway_margin_hu: float = 60.0
    """Airway lumen: within this of the scanner's air value."""
    airway_area_mm2: tuple[float, float] = (80.0, 700.0)
    """Cross-section (mm^2) of a tracheal seed."""
    airway_offset_mm: float = 40.0
    """A tracheal seed lies at most this far from the middle of the air in view."""
    airway_max_ml: float = 150.0
    """A larger airway tree has leaked into lung and is cut back."""
    airway_wall_mm: float = 3.0
    """In-plane reach (mm) of the airway lumen's partial-volume wall, removed with it."""
    closing_mm: float = 5.0
    """Radius of the rolling-ball closing that pulls vessels and pleural lesions in."""
    hole_max_mm2: float = 400.0
    """2D holes up to this area (mm^2) are vessels or nodules; larger ones need lesion."""
    pleural_fill: bool = True
    """Fill lesions that dent a lung (see lung_fill._fill_hull_dents)."""
    ggo_max_hu: float = -250.0
    """Dense ground glass spans threshold_hu..ggo_max_hu; soft tissue lies above."""
    min_ggo_fraction: float = 0.2
    """Share of ground glass that marks a dent of a lung as lesion, not organ."""
    ggo_reach_mm: float = 20.0
    """Extensive disease: thick ground glass is added up to this path length (mm)."""
    dense_fill: bool = True
    """In extensive disease, grow the lungs into consolidation (see grow_into_lesions)."""
    dense_min_ggo_share: float = 0.3
    """Extensive disease: thick ground glass at least this share of the lung volume."""
    ggo_min_hu: float = -720.0
    """Lower bound of ground glass for that test; healthy aerated lung lies below."""
    ggo_open_mm: float = 3.0
    """Ground glass thinner than this (radius, mm) is a partial-volume rim."""
    bone_hu: float = 200.0
    """Ribs, spine and sternum are above this; their hull per slice bounds the thorax."""
    cavity_margin_mm: float = 5.0
    """Inward margin (mm) from that hull to the pleural cavity."""
    dense_smoothing_mm: float = 3.0
    """In-plane Gaussian sigma (mm) before judging consolidation against organs."""
    dense_max_hu: float = 20.0
    """Consolidation is below this after smoothing; heart, liver and muscle lie above."""
    fat_hu: tuple[float, float] = (-130.0, -60.0)
    """Thick regions in this range are fat (mediastinal, pericardial), never lung."""
    dense_open_mm: float = 4.0
    """Radius (mm) of the opening that cuts thin bridges from consolidation to organs."""
    dense_reach_mm: float = 80.0
    """Consolidation is added up to this in-plane path length (mm) from ground glass."""
    min_total_ml: float = 1500.0
    """QC: fewer lungs than this (whole lungs in view) is implausible for an adult."""
    max_total_ml: float = 9000.0
    """QC: more than this is implausible."""

    def __post_init__(self) -> None:
        for name in (
            "grid_mm",
            "min_component_ml",
            "lung_p10_margin_hu",
            "emphysema_min_ml",
            "satellite_mm",
            "airway_margin_hu",
            "airway_offset_mm",
            "airway_max_ml",
            "airway_wall_mm",
            "closing_mm",
            "hole_max_mm2",
            "ggo_open_mm",
            "cavity_margin_mm",
            "dense_smoothing_mm",
            "dense_open_mm",
            "dense_reach_mm",
            "ggo_reach_mm",
            "min_total_ml",
            "max_total_ml",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"lungs.{name} must be >= 0, got {getattr(self, name)}")
        if self.grid_mm <= 0:
            raise ConfigError(f"lungs.grid_mm must be > 0, got {self.grid_mm}")
        for name in (
            "second_lung_fraction",
            "min_ggo_fraction",
            "dense_min_ggo_share",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"lungs.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.ggo_min_hu < self.ggo_max_hu:
            raise ConfigError("lungs.ggo_min_hu must be below lungs.ggo_max_hu")
        if not self.fat_hu[0] < self.fat_hu[1]:
            raise ConfigError(f"lungs.fat_hu must be (low, high), got {self.fat_hu}")
        if not self.airway_area_mm2[0] < self.airway_area_mm2[1]:
            raise ConfigError(
                f"lungs.airway_area_mm2 must be (low, high), got {self.airway_area_mm2}"
            )
        if not self.min_total_ml < self.max_total_ml:
            raise ConfigError("lungs.min_total_ml must be below lungs.max_total_ml")


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


def segment_lungs(image: sitk.Image, params: LungParams | None = None) -> sitk.Image:
    """Lung mask (uint8 0/1) of a SimpleITK CT in HU, with exactly the geometry of ``image``."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
    data = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # (i, j, k)
    mask = lung_mask(np.asarray(data), affine_from_sitk(image), params).mask
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)))
    out.CopyInformation(image)
    return out


def sitk_from_array(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image from a nibabel-ordered array ``(i, j, k)`` and its RAS affine."""
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise InputError("affine has a zero-length voxel axis")
    u, _, vt = np.linalg.svd(linear / spacing)  # nearest rotation: drops any shear
    direction = _RAS_TO_LPS @ (u @ vt)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetOrigin(tuple(float(v) for v in _RAS_TO_LPS @ affine[:3, 3]))
    return image


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """RAS voxel-to-world affine of a SimpleITK image, for its array transposed to (i, j, k)
    (the inverse of :func:`sitk_from_array`)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return affine


def segment_lungs_file(
    src: str | os.PathLike, dst: str | os.PathLike, params: LungParams | None = None
) -> Path:
    """Segment the lungs of the NIfTI CT ``src``; write ``dst`` with its exact shape/affine.

    The output is written atomically (no half-written file) and never over the input.
    Raises :class:`InputError` for an unreadable file or a scan with no lung-like air.
    """
    _segment_file(Path(src), Path(dst), params)
    return Path(dst)


def _segment_file(src: Path, dst: Path, params: LungParams | None) -> LungMask:
    """:func:`segment_lungs_file`, returning the mask with its QC."""
    from volseg.io import load_nifti, read_nifti, write_nifti

    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"{dst}: output would overwrite the input image")
    data, affine = read_nifti(src)
    like = load_nifti(src)
    if not np.issubdtype(data.dtype, np.number) or not np.all(np.isfinite(data)):
        raise InputError(f"{src}: image has non-finite values")
    result = lung_mask(data, affine, params)
    if not result.mask.any():
        raise InputError(f"{src}: no lungs found (is this a chest CT in Hounsfield units?)")
    write_nifti(dst, result.mask, affine, dtype=np.uint8, like=like)
    log.info(
        "%s: right lung %.0f mL, left lung %.0f mL",
        src.name,
        result.right_ml,
        result.left_ml,
    )
    for warning in result.warnings:
        log.warning("%s: %s", src.name, warning)
    return result


def segment_lungs_paths(
    src: Path,
    dst: Path,
    *,
    params: LungParams | None = None,
    skip_existing: bool = False,
) -> list[Path]:
    """File -> file (or into folder ``dst``), or folder -> folder of ``<id>_lungs.nii.gz``
    plus ``lung_volumes.csv`` (right/left lung volume in mL, field-of-view cuts, warnings).

    A single bad file raises :class:`InputError`; in folder mode each bad file is logged and
    skipped, and the list of files that failed is returned.
    """
    from volseg.data.layout import lungs_path, study_id
    from volseg.io import is_nifti, strip_nifti_suffix, write_text_atomic
    from volseg.progress import progress

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InputError(f"{src}: not found")
    if src.is_file():
        target = dst if is_nifti(dst) else lungs_path(dst, study_id(src))
        if not (skip_existing and target.exists()):
            segment_lungs_file(src, target, params)
            log.info("wrote %s", target)
        return []
    files = sorted(
        f
        for f in src.rglob("*")
        if f.is_file()
        and is_nifti(f)
        and not f.name.startswith(".")
        and study_id(f) == strip_nifti_suffix(f.name)  # masks (``*_mask``, ``*_lungs``) skipped
    )
    if not files:
        raise InputError(f"{src}: no .nii/.nii.gz files found")
    if is_nifti(dst):
        raise InputError(f"{dst}: input is a folder, so the output must be a folder")
    failed: list[Path] = []
    rows: list[str] = []
    for path in progress(files, desc="lungs", unit="scan"):
        target = lungs_path(dst, study_id(path))
        if skip_existing and target.exists():
            continue
        try:
            result = _segment_file(path, target, params)
        except InputError as exc:
            log.error("%s", exc)
            failed.append(path)
            continue
        rows.append(_volume_row(study_id(path), result))
    if rows:
        write_text_atomic(dst / "lung_volumes.csv", "".join([_VOLUME_HEADER, *rows]))
    log.info("%d lung masks in %s, %d failed", len(files) - len(failed), dst, len(failed))
    return failed


_VOLUME_HEADER = "id,right_lung_ml,left_lung_ml,lung_volume_ml,lungs_cut_by_fov,lung_warnings\n"


def _volume_row(sid: str, result: LungMask) -> str:
    """One ``lung_volumes.csv`` row (warnings joined by '; ', quoted)."""
    warnings = "; ".join(result.warnings).replace('"', "'")
    return (
        f"{sid},{result.right_ml:.1f},{result.left_ml:.1f},{result.total_ml:.1f},"
        f'{" ".join(result.cut_by_fov)},"{warnings}"\n'
    )
