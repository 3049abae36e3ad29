"""From aerated lung to lung: vessels, nodules, ground glass and consolidation kept inside.

Thresholding finds the air in a lung; everything denser that belongs to it is put back on
the coarse anatomical grid (``(z, y, x)``, mm spacing), one lung at a time so that nothing
bridges the mediastinum:

1. a rolling-ball closing (radius in mm) and 2D + 3D hole filling: vessels, airway walls,
   nodules and lesions surrounded by aerated lung (not an organ dome the lung wraps);
2. per axial slice, the dents of the lung's convex hull that hold ground glass (lesions
   with their ground-glass rim; the heart, hilum and liver dome are homogeneous tissue);
3. extensive disease only: growth into the thick ground glass that touches the lung and
   on through tissue that can be consolidation, inside the bony thorax
   (:func:`grow_into_lesions`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from volseg.utils import mask_box

if TYPE_CHECKING:
    from volseg.data.lung_params import LungParams

RIGHT, LEFT = 1, 2
"""Side codes of the coarse lung label map."""

log = logging.getLogger(__name__)


def fill_lung(
    lung: np.ndarray,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    p: LungParams,
) -> np.ndarray:
    """One lung's aerated mask -> the lung with its vessels and lesions (same shape)."""
    box, pad = _box(lung, spacing, p.closing_mm)
    crop = np.pad(lung[box], pad)
    glass = _thick_glass(np.pad(hu[box], pad, mode="edge"), spacing, p.threshold_hu, p)
    if p.closing_mm > 0:
        crop = _close_mm(crop, spacing, p.closing_mm)
    crop = _fill_holes(crop, glass, spacing, p)
    if p.pleural_fill:
        crop = _fill_hull_dents(crop, glass, p)
    inner = tuple(slice(a, s - b) for (a, b), s in zip(pad, crop.shape, strict=True))
    out = np.zeros_like(lung)
    out[box] = crop[inner]
    return out


def _thick_glass(
    hu: np.ndarray, spacing: tuple[float, float, float], low_hu: float, p: LungParams
) -> np.ndarray:
    """Ground glass (``low_hu``..``ggo_max_hu``) thicker than the partial-volume rim that
    every edge between aerated lung and tissue has: an in-plane opening of at least
    ``ggo_open_mm`` and 1.5 voxels."""
    band = max(p.ggo_open_mm, 1.5 * max(spacing[1:]))
    plane = (1e6, spacing[1], spacing[2])  # in-plane distances: slices are independent
    return _open_mm((hu >= low_hu) & (hu < p.ggo_max_hu), plane, band)


def _box(mask: np.ndarray, spacing: tuple[float, float, float], margin_mm: float):
    """Bounding box of ``mask`` and the zero padding that keeps a closing exact."""
    pad_vox = [int(math.ceil(margin_mm / s)) + 2 for s in spacing]
    nz = np.nonzero(mask)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    return box, [(q, q) for q in pad_vox]


def _close_mm(mask: np.ndarray, spacing: tuple[float, float, float], radius_mm: float):
    """Closing with a ball of ``radius_mm`` (``mask`` is padded by more than the radius)."""
    ball = ball_mm(radius_mm, spacing)
    return ndi.binary_erosion(ndi.binary_dilation(mask, ball), ball)


def ball_mm(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Structuring element: the voxel offsets within ``radius_mm`` (an ellipsoid in voxels;
    a huge spacing along an axis makes it flat, i.e. in-plane)."""
    reach = [int(np.floor(radius_mm / s)) for s in spacing]
    grid = np.mgrid[tuple(slice(-k, k + 1) for k in reach)]
    return sum((g * s) ** 2 for g, s in zip(grid, spacing, strict=True)) <= radius_mm**2


def _fill_holes(
    mask: np.ndarray, glass: np.ndarray, spacing: tuple[float, float, float], p: LungParams
) -> np.ndarray:
    """Fill 3D holes, and per slice the 2D holes that are lung: vessels and nodules (up to
    ``hole_max_mm2``) or larger holes holding ground glass (a lesion). A large hole of
    homogeneous tissue is an organ the lung wraps around in that slice (the liver or
    spleen dome under the base) and stays out."""
    max_pixels = p.hole_max_mm2 / (spacing[1] * spacing[2])
    for z in range(mask.shape[0]):
        if not mask[z].any():
            continue
        box = mask_box(mask[z], grow=1)  # holes lie inside the slice's mask box
        plane = mask[z][box]
        holes, n = ndi.label(ndi.binary_fill_holes(plane) & ~plane)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        area = np.bincount(holes.ravel(), minlength=n + 1)[1:]
        glassy = np.asarray(ndi.mean(glass[z][box], holes, index)) >= p.min_ggo_fraction
        plane |= np.isin(holes, index[(area <= max_pixels) | glassy])
    box = mask_box(mask, grow=1)
    out = np.zeros_like(mask)
    out[box] = ndi.binary_fill_holes(mask[box])
    return out


def _fill_hull_dents(lung: np.ndarray, glass: np.ndarray, p: LungParams) -> np.ndarray:
    """Add the lesions that dent a lung, slice by slice.

    Consolidation is not air, so thresholding cuts it out and leaves a dent in the lung.
    Per slice, each dent is a piece of the lung's convex hull that is not lung. COVID-19
    consolidation comes with a ground-glass rim, so a dent holding at least
    ``min_ggo_fraction`` of ground glass is lesion and is filled; dents of homogeneous
    soft tissue (heart, mediastinum, the liver dome under the lung bases) are left alone.
    (Filling dense dents that lie against the chest wall took in the liver dome under
    crescent-shaped lung bases.)
    """
    out = lung.copy()
    for z in np.nonzero(lung.any(axis=(1, 2)))[0]:
        region = lung[z]
        if region.sum() < 10:
            continue
        hull = convex_hull_2d(region)
        gaps, n = ndi.label(hull & ~region)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        accept = index[np.asarray(ndi.mean(glass[z], gaps, index)) >= p.min_ggo_fraction]
        if accept.size:
            out[z] |= np.isin(gaps, accept)
    return out


def convex_hull_2d(region: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2D boolean mask, over pixel centres (a flat region: itself)."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.argwhere(region).astype(np.float64)
    try:
        hull = ConvexHull(points)
    except QhullError:  # fewer than 3 points or all on one line
        return region.copy()
    lo = points.min(axis=0).astype(int)
    hi = points.max(axis=0).astype(int) + 1
    grid = np.stack(
        np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij"), -1
    )
    inside = np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-6, axis=-1)
    out = region.copy()
    out[lo[0] : hi[0], lo[1] : hi[1]] |= inside
    return out


def grow_into_lesions(
    sides: np.ndarray,
    hu: np.ndarray,
    gas: np.ndarray,
    spacing: tuple[float, float, float],
    midline: float,
    p: LungParams,
) -> np.ndarray:
    """Grow each extensively diseased lung into the lesions thresholding cut off.

    Lesion evidence is thick ground glass (``ggo_min_hu``..``ggo_max_hu``; the thin
    partial-volume rims around aerated lung and organs are removed by an in-plane
    opening). A lung where it is at least ``dense_min_ggo_share`` of the lung volume is
    extensively diseased (healthy real lungs reach 20 %: dependent density, and the
    partial volume of the diaphragm in 8 mm slices) and grows, inside the bony thorax,
    along paths in-plane and across slices (so a fully consolidated basal or apical slice
    is reached too):

    1. into the thick ground glass that touches it, up to ``ggo_reach_mm``;
    2. then through tissue that can be consolidation, up to ``dense_reach_mm``: below
       ``dense_max_hu`` after smoothing (heart, liver and muscle are denser), not thick
       fat, not gas, not the other lung.

    Growth stays on the lung's own side of ``midline`` (the x index of the spine) and out
    of the region between the two lungs where both are intact (:func:`between_lungs`): the
    mediastinum, whose fat mixed with vessels and lymph nodes smooths to consolidation HU
    in non-contrast scans. A lung
    with no air left beside an extensively diseased one starts from the largest region of
    thick ground glass on its side.

    Holes left inside a grown lung (a consolidated core in its halo) are filled. Other
    lungs are returned unchanged (growing through consolidation next to any ground glass
    took in the mediastinum and the crura of healthy real scans). ``sides`` is the side
    map of the filled lungs; the grown side map is returned.
    """
    zs = np.nonzero(sides.any(axis=(1, 2)))[0]
    if zs.size == 0 or not p.dense_fill:
        return sides
    z_pad = int(round(max(p.ggo_reach_mm, p.dense_reach_mm) / spacing[0]))
    box = slice(max(int(zs[0]) - z_pad, 0), int(zs[-1]) + z_pad + 1)
    sm, block = hu[box], sides[box].copy()
    plane = (1e6, spacing[1], spacing[2])  # in-plane distances: slices are independent
    thick = _thick_glass(sm, spacing, p.ggo_min_hu, p)
    extensive = []
    for side in np.unique(block[block > 0]):
        lung = block == side
        share = float((thick & lung).sum()) / max(float(lung.sum()), 1.0)
        log.debug("lung %d: thick ground glass %.3f of its volume", side, share)
        if share >= p.dense_min_ggo_share:
            extensive.append(int(side))
    if not extensive:
        return sides
    cavity = thoracic_cavity(sm, spacing, p) & ~between_lungs(block, p.mediastinum_solidity)
    glass = thick & cavity & ~gas[box]
    # Each lung grows on its own side of the midline only: lesions never cross the
    # mediastinum, and a leak through mediastinal tissue stops there.
    xs = np.arange(block.shape[2])[None, None, :]
    own = {RIGHT: np.broadcast_to(xs < midline, block.shape)}
    own[LEFT] = ~own[RIGHT]
    for side in (RIGHT, LEFT):
        if side not in np.unique(block) and glass[own[side]].any():
            # A lung with no air left at all: its thick ground glass is the seed.
            seed = glass & own[side] & (block == 0)
            labels, n = ndi.label(seed)
            if n:
                sizes = np.bincount(labels.ravel())[1:]
                block[labels == 1 + int(np.argmax(sizes))] = side
                extensive.append(side)
    sigma = [0.0, p.dense_smoothing_mm / spacing[1], p.dense_smoothing_mm / spacing[2]]
    dense = ndi.gaussian_filter(sm, sigma)
    # Fat planes are thick; the fat-range ring around any air/tissue edge is thin.
    fat = _open_mm((dense > p.fat_hu[0]) & (dense < p.fat_hu[1]), plane, p.ggo_open_mm)
    tissue = cavity & (dense < p.dense_max_hu) & (sm < p.dense_max_hu + 20.0) & ~fat
    tissue &= ~gas[box] & (block == 0)
    tissue = _open_mm(tissue, plane, p.dense_open_mm) | glass
    for side in extensive:
        _grow(block, side, glass & own[side], spacing, p.ggo_reach_mm)
        _grow(block, side, tissue & own[side], spacing, p.dense_reach_mm)
        block[_fill_holes(block == side, sm, spacing, p) & (block == 0)] = side
    out = sides.copy()
    out[box] = block
    return out


def between_lungs(sides: np.ndarray, min_solidity: float) -> np.ndarray:
    """Per axial slice of the side map ``sides``, the region between the two lungs: inside
    the convex hull of both, outside each lung's own hull (the mediastinum, and the
    pericardial and paravertebral tissue the lungs wrap).

    Only on slices where each lung fills at least ``min_solidity`` of its own hull: a lung
    left as scattered aerated remnants in extensive consolidation has small hulls, and the
    region "between" them would hold its own consolidated lung (measured on synthetic CT-4
    scans, docs/lungs.md).
    """
    out = np.zeros(sides.shape, dtype=bool)
    for z in range(sides.shape[0]):
        right, left = sides[z] == RIGHT, sides[z] == LEFT
        if right.sum() < 3 or left.sum() < 3:
            continue
        hull_right, hull_left = convex_hull_2d(right), convex_hull_2d(left)
        if right.sum() < min_solidity * hull_right.sum():
            continue
        if left.sum() < min_solidity * hull_left.sum():
            continue
        out[z] = convex_hull_2d(right | left) & ~hull_right & ~hull_left
    return out


def _grow(
    block: np.ndarray,
    side: int,
    allowed: np.ndarray,
    spacing: tuple[float, float, float],
    reach_mm: float,
) -> None:
    """Geodesic growth of lung ``side`` of the side map ``block`` into free ``allowed``
    voxels, up to ``reach_mm`` in-plane; across slices one step per slice spacing."""
    steps = int(round(reach_mm / min(spacing[1:])))
    if steps <= 0:
        return
    z_every = max(1, int(round(spacing[0] / min(spacing[1:]))))
    # Growth never leaves free | reached: work on its bounding box (a view into block).
    region = (block == side) | (allowed & (block == 0))
    if not region.any():
        return
    box = mask_box(region)
    block = block[box]
    reached = block == side
    free = allowed[box] & (block == 0)
    cross = _plane_cross()
    for i in range(steps):
        step = ndi.binary_dilation(reached, cross, mask=free | reached)
        if (i + 1) % z_every == 0:
            step |= _z_neighbours(reached) & free
        if np.array_equal(step, reached):
            break
        reached = step
    block[reached & (block == 0)] = side


def _z_neighbours(mask: np.ndarray) -> np.ndarray:
    """Voxels directly above or below a voxel of ``mask``."""
    out = np.zeros_like(mask)
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    return out


def _plane_cross() -> np.ndarray:
    """3D structuring element connecting 4-neighbours within an axial slice only."""
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndi.generate_binary_structure(2, 1)
    return s


def _open_mm(mask: np.ndarray, sampling: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Morphological opening with a ball of ``radius_mm``; the field of view's edge does
    not erode (what lies beyond it is unknown, not empty)."""
    if radius_mm <= 0:
        return mask
    ball = ball_mm(radius_mm, sampling)
    return ndi.binary_dilation(ndi.binary_erosion(mask, ball, border_value=1), ball) & mask


def body_bone(hu: np.ndarray, p: LungParams) -> np.ndarray:
    """Bone (> ``bone_hu``) of the body, the largest non-air component (so not the table):
    ribs, spine and sternum."""
    body = hu >= p.threshold_hu
    labels, n = ndi.label(body)
    if n > 1:
        body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return (hu > p.bone_hu) & body


def bony_hull(bone: np.ndarray) -> np.ndarray:
    """Per slice, the convex hull of ``bone``: the rib cage and what it encloses (empty on
    slices with fewer than 3 bone voxels)."""
    hull = np.zeros_like(bone)
    for z in range(bone.shape[0]):
        if bone[z].sum() >= 3:
            hull[z] = convex_hull_2d(bone[z])
    return hull


def thoracic_cavity(
    hu: np.ndarray, spacing: tuple[float, float, float], p: LungParams
) -> np.ndarray:
    """Per slice, the region enclosed by the bony thorax minus a wall margin (mm): the hull
    of :func:`body_bone` eroded by ``cavity_margin_mm`` for the ribs and intercostal
    muscles."""
    bone = body_bone(hu, p)
    hull = bony_hull(bone)
    cavity = np.zeros_like(bone)
    for z in np.nonzero(hull.any(axis=(1, 2)))[0]:
        cavity[z] = ndi.distance_transform_edt(hull[z], sampling=spacing[1:]) > p.cavity_margin_mm
    return cavity & ~bone
