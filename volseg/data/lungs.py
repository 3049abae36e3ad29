"""Classical lung segmentation of chest CT (Hounsfield units), no training needed.

Every stage needs a lung mask: the GAN works inside it, prediction is restricted to it and
% involvement is measured against it. The method, on the image re-oriented to LPS with the
affine (so "axial" is right for any orientation):

1. smooth, threshold air (< -400 HU, so ground glass stays in);
2. drop air connected to the border of each axial slice (outside air, table);
3. drop small pure-air blobs near the midline of each slice (trachea, main bronchi);
4. 3D components: keep lung-like ones (median HU clearly above the outside air: bowel and
   stomach gas are pure air, aerated lung is not), the largest and a second one if it is
   large enough (one when the lungs touch);
5. per lung and slice, fill the dents of its convex hull that hold ground glass (dense
   lesions with their ground-glass rim), then a rolling-ball closing sized in mm and 2D +
   3D hole filling, so vessels and lesions at the pleura end up inside the lung;
6. extensive disease only (thick ground glass >= 40 % of the aerated volume): grow each
   slice's lung from its ground glass, through aerated pockets and tissue that can be
   consolidation -- inside the bony thorax (convex hull of rib/spine/sternum bone), below
   +20 HU after smoothing (heart, liver, muscle are denser), not thick fat, within 30 mm.

Limits: step 6 recovers most, not all, of a lung whose air is almost entirely replaced by
consolidation; consolidation far (> 30 mm) from any ground glass, or as dense as the heart,
stays out. Healthy and mild scans (CT-0..CT-2) are unaffected by step 6.

All sizes are in millimetres and converted with the image spacing, so anisotropic MosMed
scans (0.7 x 0.7 x 8 mm) and isotropic ones behave alike.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from volseg.errors import ConfigError, InputError

if TYPE_CHECKING:
    import SimpleITK as sitk

log = logging.getLogger(__name__)

# ITK works in LPS, NIfTI affines are RAS: flip the first two axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class LungParams:
    """Tunable settings of :func:`segment_lungs` (HU, mm, mL)."""

    threshold_hu: float = -400.0
    """Voxels below this (after smoothing) are air or aerated lung."""
    smoothing_mm: float = 1.0
    """Gaussian sigma before thresholding, in mm."""
    min_component_ml: float = 0.2
    """Air components smaller than this are ignored."""
    gas_margin_hu: float = 60.0
    """A component whose median HU is within this of the outside air is gas, not lung."""
    second_lung_fraction: float = 0.05
    """Keep the second-largest lung-like component if at least this share of the largest."""
    airway_max_area_mm2: float = 800.0
    """Largest cross-section (mm^2) of a pure-air blob treated as trachea or main bronchus."""
    airway_central_fraction: float = 0.15
    """Airway blobs lie within this fraction of the body width from the body's centre."""
    closing_mm: float = 10.0
    """Radius of the rolling-ball closing that pulls vessels and pleural lesions in."""
    pleural_fill: bool = True
    """Fill dense lesions that dent a lung (see _fill_pleural_bites)."""
    ggo_max_hu: float = -250.0
    """Dense ground glass spans threshold_hu..ggo_max_hu; soft tissue lies above."""
    min_ggo_fraction: float = 0.2
    """Share of ground glass that marks a dense region next to a lung as lesion, not organ."""
    dense_fill: bool = True
    """In extensive disease, grow the lungs into consolidation (see _recover_dense)."""
    dense_min_ggo_share: float = 0.4
    """Extensive disease: thick ground glass at least this share of the aerated lung volume."""
    ggo_min_hu: float = -720.0
    """Lower bound of ground glass for that test; healthy aerated lung lies below."""
    ggo_open_mm: float = 3.0
    """Ground glass thinner than this (radius, mm; at least 1.5 pixels) is a partial-volume rim."""
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
    dense_reach_mm: float = 30.0
    """Consolidation is added up to this in-plane path length (mm) from ground glass."""

    def __post_init__(self) -> None:
        for name in (
            "smoothing_mm",
            "min_component_ml",
            "gas_margin_hu",
            "closing_mm",
            "ggo_open_mm",
            "cavity_margin_mm",
            "dense_smoothing_mm",
            "dense_open_mm",
            "dense_reach_mm",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"lungs.{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "second_lung_fraction",
            "airway_central_fraction",
            "min_ggo_fraction",
            "dense_min_ggo_share",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"lungs.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.ggo_min_hu < self.ggo_max_hu:
            raise ConfigError("lungs.ggo_min_hu must be below lungs.ggo_max_hu")
        if not self.fat_hu[0] < self.fat_hu[1]:
            raise ConfigError(f"lungs.fat_hu must be (low, high), got {self.fat_hu}")


def segment_lungs(image: sitk.Image, params: LungParams | None = None) -> sitk.Image:
    """Lung mask (uint8 0/1) of a CT in HU, with exactly the geometry of ``image``."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
    code = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
    oriented = sitk.DICOMOrient(image, "LPS")
    hu = sitk.GetArrayViewFromImage(oriented).astype(np.float32)  # (S, P, L) = (z, y, x)
    spacing = tuple(float(s) for s in oriented.GetSpacing()[::-1])
    mask = lung_mask_array(hu, spacing, params or LungParams())
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
    out.CopyInformation(oriented)
    out = sitk.DICOMOrient(out, code)
    out.CopyInformation(image)
    return out


def lung_mask_array(
    hu: np.ndarray, spacing: tuple[float, float, float], params: LungParams
) -> np.ndarray:
    """Boolean lung mask of an LPS-ordered array ``(z, y, x)`` with ``spacing`` in mm.

    Axis 0 must be the axial (cranio-caudal) axis; :func:`segment_lungs` ensures that.
    """
    p = params
    sigma = [p.smoothing_mm / s for s in spacing]
    smooth = ndi.gaussian_filter(hu.astype(np.float32, copy=False), sigma=sigma)
    air = smooth < p.threshold_hu
    outside = _border_connected(air)
    air_ref = float(np.median(hu[outside])) if outside.sum() >= 100 else -1000.0
    inside = air & ~outside
    inside &= ~_airway_blobs(inside, smooth, ~outside, air_ref, spacing, p)
    components, satellites, gas = _select_lungs(inside, smooth, air_ref, spacing, p)
    lungs = np.zeros(hu.shape, dtype=bool)
    ground_glass = (smooth >= p.threshold_hu) & (smooth < p.ggo_max_hu)
    for comp in components:
        if p.pleural_fill:
            comp = _fill_pleural_bites(comp, ground_glass, p.min_ggo_fraction)
        lungs |= _fill_lung(comp, spacing, p.closing_mm)
    if p.dense_fill and lungs.any():
        lungs = _recover_dense(lungs, satellites, smooth, gas, spacing, p)
    return lungs


_COARSE_MM = 1.5
"""In-plane grid (mm) of the dense-fill step; finer scans are subsampled to it."""


def _recover_dense(
    lungs: np.ndarray,
    satellites: np.ndarray,
    smooth: np.ndarray,
    gas: np.ndarray,
    spacing: tuple[float, float, float],
    p: LungParams,
) -> np.ndarray:
    """Add the consolidated lung that thresholding missed, in extensive disease only.

    When much of a lung is consolidated, its air is reduced to ground glass and scattered
    pockets, and the air-based mask under-segments it. Lesion evidence is thick ground glass
    (partial-volume rims around aerated lung and organs removed by an in-plane opening); if
    it amounts to ``dense_min_ggo_share`` of the aerated lung volume, the disease is
    extensive and the lung is grown, per slice, from that ground glass through tissue that
    can be consolidation: inside the bony thorax, below ``dense_max_hu`` after smoothing
    (heart, liver and muscle are denser), not thick fat, not gas, at most
    ``dense_reach_mm`` away along the path. Healthy and mildly diseased scans are returned
    unchanged, so the gain on severe scans costs nothing on the common ones.
    """
    zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    # Work on the lung slices, in-plane on a grid of about ``_COARSE_MM`` (speed only).
    f = max(1, int(_COARSE_MM // max(spacing[1:])))
    box = (slice(int(zs[0]), int(zs[-1]) + 1), slice(None, None, f), slice(None, None, f))
    sm, lung_b = smooth[box], lungs[box]
    spacing = (spacing[0], spacing[1] * f, spacing[2] * f)
    plane = (1e6, spacing[1], spacing[2])  # in-plane distances: slices are independent
    band = max(p.ggo_open_mm, 1.5 * max(spacing[1:]))
    aerated = (sm < p.ggo_min_hu) & ~gas[box]
    rim = ndi.distance_transform_edt(~aerated, sampling=plane) <= band
    seeds = _open_mm((sm >= p.ggo_min_hu) & (sm < p.ggo_max_hu), plane, band)
    share = float(seeds.sum()) / max(float(lung_b.sum()), 1.0)
    log.debug("thick ground glass: %.3f of the aerated lung volume", share)
    if share < p.dense_min_ggo_share:
        return lungs
    cavity = _thoracic_cavity(sm, spacing, p)
    seeds &= cavity
    sigma = [0.0, p.dense_smoothing_mm / spacing[1], p.dense_smoothing_mm / spacing[2]]
    dense = ndi.gaussian_filter(sm, sigma)
    # Fat planes are thick; the fat-range ring around any air/tissue edge is thin.
    fat = _open_mm((dense > p.fat_hu[0]) & (dense < p.fat_hu[1]), plane, p.ggo_open_mm)
    tissue = cavity & (dense < p.dense_max_hu) & ~fat & ~gas[box] & ~lung_b
    tissue = _open_mm(tissue, plane, p.dense_open_mm) & ~rim
    tissue |= seeds | (satellites[box] & cavity)
    tissue |= ndi.binary_dilation(seeds, _plane_cross(), iterations=2) & cavity
    steps = max(1, int(round(p.dense_reach_mm / min(spacing[1:]))))
    reach = ndi.binary_dilation(seeds, _plane_cross(), iterations=steps, mask=tissue)
    if f > 1:
        reach = reach.repeat(f, axis=1).repeat(f, axis=2)[:, : lungs.shape[1], : lungs.shape[2]]
    out = lungs.copy()
    out[box[0]] |= reach
    return out


def _plane_cross() -> np.ndarray:
    """3D structuring element connecting 4-neighbours within an axial slice only."""
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndi.generate_binary_structure(2, 1)
    return s


def _open_mm(mask: np.ndarray, sampling: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Morphological opening with a ball of ``radius_mm`` (exact, via two distance maps)."""
    if radius_mm <= 0:
        return mask
    core = ndi.distance_transform_edt(mask, sampling=sampling) > radius_mm
    return ndi.distance_transform_edt(~core, sampling=sampling) <= radius_mm


def _thoracic_cavity(
    smooth: np.ndarray, spacing: tuple[float, float, float], p: LungParams
) -> np.ndarray:
    """Per slice, the region enclosed by the bony thorax minus a wall margin (mm).

    Bone (> ``bone_hu``) of the body (the largest non-air component, so not the table)
    spans ribs, spine and sternum; its convex hull per slice is the rib cage and what it
    encloses, eroded by ``cavity_margin_mm`` for the ribs and intercostal muscles.
    """
    body = smooth >= p.threshold_hu
    labels, n = ndi.label(body)
    if n > 1:
        body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    bone = (smooth > p.bone_hu) & body
    cavity = np.zeros_like(bone)
    for z in range(bone.shape[0]):
        if bone[z].sum() < 3:
            continue
        hull = _convex_hull_2d(bone[z])
        cavity[z] = ndi.distance_transform_edt(hull, sampling=spacing[1:]) > p.cavity_margin_mm
    return cavity & ~bone


def _fill_pleural_bites(
    lung: np.ndarray, ground_glass: np.ndarray, ggo_fraction: float
) -> np.ndarray:
    """Add the lesions that dent a lung, slice by slice.

    Consolidation is not air, so thresholding cuts it out and leaves a dent in the lung.
    Per slice, each dent is a piece of the lung's convex hull that is not lung. COVID
    consolidation comes with a ground-glass rim, so a dent holding at least ``ggo_fraction``
    of ground-glass voxels is lesion and is filled; dents of homogeneous soft tissue (heart,
    mediastinum, the liver dome under the lung bases) are left alone. (Judging dents by
    position instead -- lateral, or near the skin -- took in the liver dome and the heart.)
    """
    out = lung.copy()
    for z in np.nonzero(lung.any(axis=(1, 2)))[0]:
        region = lung[z]
        if region.sum() < 10:
            continue
        hull = _convex_hull_2d(region)
        gaps, n = ndi.label(hull & ~region)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        glassy = np.asarray(ndi.mean(ground_glass[z], gaps, index))
        accept = index[glassy >= ggo_fraction]
        if accept.size:
            out[z] |= np.isin(gaps, accept)
    return out


def _convex_hull_2d(region: np.ndarray) -> np.ndarray:
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


def _border_connected(air: np.ndarray) -> np.ndarray:
    """Air connected to the edge of its axial slice (outside the body, under the table)."""
    out = np.zeros_like(air)
    for z in range(air.shape[0]):
        labels, n = ndi.label(air[z])
        if n == 0:
            continue
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        touching = np.unique(edge[edge > 0])
        out[z] = np.isin(labels, touching)
    return out


def _airway_blobs(
    inside: np.ndarray,
    smooth: np.ndarray,
    body: np.ndarray,
    air_ref: float,
    spacing: tuple[float, float, float],
    p: LungParams,
) -> np.ndarray:
    """Small pure-air 2D blobs near the body's midline: trachea and main bronchi."""
    pixel_mm2 = spacing[1] * spacing[2]
    max_pixels = p.airway_max_area_mm2 / pixel_mm2
    airway = np.zeros_like(inside)
    for z in range(inside.shape[0]):
        cols = np.nonzero(body[z].any(axis=0))[0]
        if cols.size == 0:
            continue
        centre, width = (cols[0] + cols[-1]) / 2.0, float(cols[-1] - cols[0] + 1)
        labels, n = ndi.label(inside[z])
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        small = idx[area <= max_pixels]
        if small.size == 0:
            continue
        medians = _label_medians(labels, smooth[z], small)
        centroids = np.asarray(ndi.center_of_mass(inside[z], labels, small)).reshape(-1, 2)
        central = np.abs(centroids[:, 1] - centre) <= p.airway_central_fraction * width
        pure_air = medians < air_ref + p.gas_margin_hu
        hits = small[central & pure_air]
        if hits.size:
            airway[z] = np.isin(labels, hits)
    return airway


def _select_lungs(
    inside: np.ndarray,
    smooth: np.ndarray,
    air_ref: float,
    spacing: tuple[float, float, float],
    p: LungParams,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The one or two 3D air components that are lungs (largest lung-like ones), and the
    gas: air that is not lung-like (bowel, stomach, airways), excluded from later growth."""
    labels, n = ndi.label(inside)
    if n == 0:
        return [], np.zeros_like(inside), np.zeros_like(inside)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    idx = np.arange(1, n + 1)
    big = idx[sizes * voxel_ml >= p.min_component_ml]
    if big.size == 0:
        return [], np.zeros_like(inside), inside.copy()
    medians = _label_medians(labels, smooth, big)
    lung_like = big[medians >= air_ref + p.gas_margin_hu]
    if lung_like.size == 0:
        log.warning("no air component looks like lung tissue; keeping the largest air regions")
        lung_like = big
    order = lung_like[np.argsort(sizes[lung_like - 1])[::-1]]
    chosen = [order[0]]
    if order.size > 1 and sizes[order[1] - 1] >= p.second_lung_fraction * sizes[order[0] - 1]:
        chosen.append(order[1])
    gas = inside & ~np.isin(labels, lung_like)
    satellites = np.isin(labels, np.setdiff1d(lung_like, chosen))
    return [labels == k for k in chosen], satellites, gas


def _label_medians(labels: np.ndarray, values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Median of ``values`` over each label in ``index`` (one sort, unlike ndi.median)."""
    keep = np.isin(labels, index)
    lab, val = labels[keep], values[keep]
    order = np.lexsort((val, lab))
    lab, val = lab[order], val[order]
    starts = np.searchsorted(lab, index, side="left")
    ends = np.searchsorted(lab, index, side="right")
    return np.array([np.median(val[a:b]) for a, b in zip(starts, ends, strict=True)])


def _fill_lung(mask: np.ndarray, spacing: tuple[float, float, float], radius_mm: float):
    """Rolling-ball closing (radius in mm) then 2D per-slice and 3D hole filling."""
    pad = [int(math.ceil(radius_mm / s)) + 2 for s in spacing]
    nz = np.nonzero(mask)
    lo = [max(int(a.min()) - q, 0) for a, q in zip(nz, pad, strict=True)]
    hi = [min(int(a.max()) + q + 1, n) for a, q, n in zip(nz, pad, mask.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    crop = np.pad(mask[box], [(q, q) for q in pad])
    if radius_mm > 0:
        # Closing as two distance thresholds: exact ball in mm, linear time in voxels.
        dilated = ndi.distance_transform_edt(~crop, sampling=spacing) <= radius_mm
        crop = ndi.distance_transform_edt(dilated, sampling=spacing) > radius_mm
    for z in range(crop.shape[0]):
        crop[z] = ndi.binary_fill_holes(crop[z])
    crop = ndi.binary_fill_holes(crop)
    inner = tuple(slice(q, s - q) for q, s in zip(pad, crop.shape, strict=True))
    out = np.zeros_like(mask)
    out[box] = crop[inner]
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


def segment_lungs_file(
    src: str | os.PathLike, dst: str | os.PathLike, params: LungParams | None = None
) -> Path:
    """Segment the lungs of the NIfTI CT ``src``; write ``dst`` with its exact shape/affine.

    The output is written atomically (no half-written file) and never over the input.
    Raises :class:`InputError` for an unreadable file or a scan with no lung-like air.
    """
    from volseg.io import load_nifti, read_nifti, write_nifti

    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"{dst}: output would overwrite the input image")
    data, affine = read_nifti(src)
    like = load_nifti(src)
    if not np.issubdtype(data.dtype, np.number) or not np.all(np.isfinite(data)):
        raise InputError(f"{src}: image has non-finite values")
    mask_img = segment_lungs(sitk_from_array(data.astype(np.float32), affine), params)
    import SimpleITK as sitk

    mask = sitk.GetArrayViewFromImage(mask_img).transpose(2, 1, 0).astype(np.uint8)
    if not mask.any():
        raise InputError(f"{src}: no lungs found (is this a chest CT in Hounsfield units?)")
    write_nifti(dst, mask, affine, dtype=np.uint8, like=like)
    log.debug(
        "%s: lungs %.1f mL", src.name, mask.sum() * np.prod(like.header.get_zooms()[:3]) / 1e3
    )
    return dst


def segment_lungs_paths(
    src: Path,
    dst: Path,
    *,
    params: LungParams | None = None,
    skip_existing: bool = False,
) -> list[Path]:
    """File -> file (or into folder ``dst``), or folder -> folder of ``<id>_lungs.nii.gz``.

    A single bad file raises :class:`InputError`; in folder mode each bad file is logged and
    skipped, and the list of files that failed is returned.
    """
    from volseg.data.layout import lungs_path, study_id
    from volseg.io import is_nifti, strip_nifti_suffix
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
    for path in progress(files, desc="lungs", unit="scan"):
        target = lungs_path(dst, study_id(path))
        if skip_existing and target.exists():
            continue
        try:
            segment_lungs_file(path, target, params)
        except InputError as exc:
            log.error("%s", exc)
            failed.append(path)
    log.info("%d lung masks in %s, %d failed", len(files) - len(failed), dst, len(failed))
    return failed
