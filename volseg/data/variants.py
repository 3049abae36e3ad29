"""Scanner and field-of-view variants of a CT with its reference mask, for robustness checks.

A real CT and its reference mask are turned into what other scanners and protocols would
have produced from the same patient: other voxel sizes (a thick-slice scanner averages
over its slice, so the image is low-pass filtered to the new resolution before linear
resampling; the reference is resampled linearly and cut at 0.5), other voxel orders, a
field of view cut to one hemithorax, to a tighter circle or to the lung bases, and other
padding values outside the scan circle. Both arrays of a variant share one grid, so a
method run on the image is scored against the reference transformed the same way.

Also here: the plain baseline every lung mask must beat, -400 HU threshold and the two
largest air components inside the body.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

SPACINGS_MM: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0),
    (1.5, 1.5, 1.5),
    (0.7, 0.7, 5.0),
    (0.8, 0.8, 8.0),
    (2.7, 2.7, 5.0),
    (4.2, 4.2, 4.0),
    (5.6, 5.6, 4.0),
)
"""Voxel sizes of the resampled variants: 0.7-8 mm slices, 0.7-5.6 mm in-plane."""

ORIENTATIONS = ("LPS", "LAS", "PIR")
PADDINGS_HU = (-3024.0, -1024.0)


@dataclass
class Variant:
    """One variant: image and reference on one grid (nibabel voxel order, RAS affine)."""

    name: str
    image: np.ndarray  # float32 HU
    reference: np.ndarray  # bool
    affine: np.ndarray


def scan_variants(
    image: np.ndarray,
    reference: np.ndarray,
    affine: np.ndarray,
    *,
    whole_chest: bool = True,
    spacings: tuple[tuple[float, float, float], ...] = SPACINGS_MM,
) -> Iterator[Variant]:
    """The native scan, then every variant (resampled, reoriented, cropped, re-padded).

    ``whole_chest``: add the lung-bases and upper-chest crops (meaningless for a scan that
    shows only the bases already).
    """
    from volseg.data.lung_files import sitk_from_array

    img = sitk_from_array(np.asarray(image, dtype=np.float32), affine)
    ref = sitk_from_array(np.asarray(reference, dtype=np.float32), affine)
    yield _variant("native", img, ref)
    for spacing in spacings:
        name = "x".join(f"{s:g}" for s in spacing) + " mm"
        yield _variant(name, *_resample(img, ref, spacing))
    for code in ORIENTATIONS:
        yield _variant(code, *_reorient(img, ref, code))
    yield from _crops(img, ref, whole_chest)
    for value in PADDINGS_HU:
        yield _variant(f"padding {value:g}", _repad(img, value), ref)


def resampled(
    image: np.ndarray, reference: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...]
) -> Variant:
    """One scan and its mask on a grid of ``spacing`` mm, as a coarser scanner sees it."""
    from volseg.data.lung_files import sitk_from_array

    img = sitk_from_array(np.asarray(image, dtype=np.float32), affine)
    ref = sitk_from_array(np.asarray(reference, dtype=np.float32), affine)
    name = "x".join(f"{s:g}" for s in spacing) + " mm"
    return _variant(name, *_resample(img, ref, tuple(float(s) for s in spacing)))


def threshold_baseline(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Plain lung mask: -400 HU, air inside the body (the largest tissue component, holes
    filled per axial slice), its two largest 3D components, holes filled per slice."""
    from volseg.data.lung_grid import AxisOrder

    order = AxisOrder.from_affine(affine)
    hu = np.asarray(order.forward(np.asarray(image)))
    tissue = hu >= -400.0
    labels, n = ndi.label(tissue)
    if n:
        tissue = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    body = np.stack([ndi.binary_fill_holes(s) for s in tissue])
    labels, n = ndi.label((hu < -400.0) & body)
    mask = np.zeros(hu.shape, dtype=bool)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        for k in np.argsort(sizes)[::-1][:2]:
            mask |= labels == k + 1
    mask = np.stack([ndi.binary_fill_holes(s) for s in mask])
    return np.ascontiguousarray(order.backward(mask))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean volumes (1 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def _variant(name: str, img, ref) -> Variant:
    import SimpleITK as sitk

    from volseg.data.lung_files import affine_from_sitk

    image = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)
    reference = sitk.GetArrayFromImage(ref).transpose(2, 1, 0) > 0.5
    return Variant(name, image, reference, affine_from_sitk(img))


def _resample(img, ref, spacing: tuple[float, float, float]):
    """Same field of view on a grid of ``spacing`` (mm, along the image's axes)."""
    import SimpleITK as sitk

    old = np.asarray(img.GetSpacing(), dtype=np.float64)
    size = np.asarray(img.GetSize())
    extent = old * size
    new_size = np.maximum(1, np.round(extent / np.asarray(spacing))).astype(int)
    new = extent / new_size
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    corner = np.asarray(img.GetOrigin()) - direction @ (old / 2.0)
    origin = corner + direction @ (new / 2.0)
    # A coarser scanner integrates over its voxel: low-pass to the new resolution (FWHM).
    sigma = np.sqrt(np.maximum(new**2 - old**2, 0.0)) / 2.355
    src = sitk.SmoothingRecursiveGaussian(img, [float(max(s, 1e-3)) for s in sigma])

    def resample(image, default: float):
        f = sitk.ResampleImageFilter()
        f.SetOutputSpacing([float(v) for v in new])
        f.SetSize([int(v) for v in new_size])
        f.SetOutputOrigin([float(v) for v in origin])
        f.SetOutputDirection(img.GetDirection())
        f.SetInterpolator(sitk.sitkLinear)
        f.SetDefaultPixelValue(default)
        return f.Execute(image)

    return resample(src, -1024.0), resample(ref, 0.0)


def _reorient(img, ref, code: str):
    import SimpleITK as sitk

    return sitk.DICOMOrient(img, code), sitk.DICOMOrient(ref, code)


def _crops(img, ref, whole_chest: bool) -> Iterator[Variant]:
    """One hemithorax (each side, cut at the middle of the lungs), a tight field of view
    that cuts the body on every side, and for whole-chest scans the bases and upper chest."""
    import SimpleITK as sitk

    img, ref = sitk.DICOMOrient(img, "LPS"), sitk.DICOMOrient(ref, "LPS")
    lungs = sitk.GetArrayViewFromImage(ref) > 0.5  # (z, y, x): S, P, L
    xs = np.nonzero(lungs.any(axis=(0, 1)))[0]
    zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    nx, ny, nz = img.GetSize()
    mid = int(round(0.5 * (xs[0] + xs[-1])))
    boxes = {
        "right hemithorax": ((0, mid), (0, ny), (0, nz)),
        "left hemithorax": (((mid + 3), nx), (0, ny), (0, nz)),
        "tight field of view": (
            (int(0.2 * nx), int(0.8 * nx)),
            (int(0.15 * ny), int(0.85 * ny)),
            (0, nz),
        ),
    }
    if whole_chest:
        base_top = int(zs[0] + 0.3 * (zs[-1] - zs[0]))
        boxes["lung bases"] = ((0, nx), (0, ny), (max(int(zs[0]) - 10, 0), base_top))
        boxes["upper chest"] = ((0, nx), (0, ny), (base_top, nz))
    for name, ((x0, x1), (y0, y1), (z0, z1)) in boxes.items():
        yield _variant(name, img[x0:x1, y0:y1, z0:z1], ref[x0:x1, y0:y1, z0:z1])


def _repad(img, value: float):
    """Padding outside the scan circle set to ``value``; a scan without padding gets a
    circle (inscribed in its larger in-plane extent) first."""
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(img)  # (k, j, i)
    outside = a < -1500.0
    if not outside.any():
        _, ny, nx = a.shape
        yy, xx = np.mgrid[:ny, :nx]
        radius = 0.5 * max(nx, ny)
        ring = (yy - (ny - 1) / 2.0) ** 2 + (xx - (nx - 1) / 2.0) ** 2 > radius**2
        outside = np.broadcast_to(ring, a.shape)
    out = sitk.GetImageFromArray(np.where(outside, value, a).astype(np.float32))
    out.CopyInformation(img)
    return out
