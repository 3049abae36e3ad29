"""How much a CT looks like a real chest CT: measurable features and distances between scans.

Every feature is computed on the scan's own grid from its HU and a lung mask, in physical
units, so a synthetic scan and a real one resampled to the same voxel size
(:mod:`volseg.data.variants`) can be compared:

- the lung HU distribution (and the Wasserstein-1 distance between two of them, in HU);
- the dependent gradient: median lung HU of the posterior fifth minus the anterior fifth
  of each lung's antero-posterior extent (a supine patient's dependent lung is denser);
- the vessel volume fraction: share of lung voxels above -500 HU;
- the vessel density: cross-sections of vessels (in-plane connected regions above
  ``VESSEL_HU``) per cm2 of lung core (lung at least ``CORE_MARGIN_MM`` in-plane from its
  edge), over the slices: how many vessels the inner lung shows, whatever their calibre;
- the body (non-lung tissue) HU distribution;
- image noise in the air around the patient: its standard deviation, and its
  correlation at one voxel in-plane (white noise 0, a soft reconstruction kernel near 1);
- the lung volume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

VESSEL_HU = -350.0
"""A lung voxel above this is vessel (or lesion) in the vessel density."""
CORE_MARGIN_MM = 6.0
"""The lung core of the vessel density lies this far in-plane inside the lung edge, away
from the partial volume of chest wall, diaphragm and mediastinum."""

_LUNG_BINS = np.arange(-1024.0, 201.0, 8.0)
_BODY_BINS = np.arange(-200.0, 301.0, 5.0)


@dataclass
class Features:
    """Realism features of one CT (see the module docstring)."""

    lung_ml: float
    lung_hu_p10: float
    lung_hu_median: float
    lung_hu_p90: float
    dependent_gradient_hu: float
    vessel_fraction: float
    vessels_per_cm2: float
    noise_hu: float
    noise_correlation: float
    lung_hist: np.ndarray  # density over _LUNG_BINS
    body_hist: np.ndarray  # density over _BODY_BINS

    def summary(self) -> dict[str, float]:
        """Scalar features, rounded for a report."""
        out = asdict(self)
        out.pop("lung_hist")
        out.pop("body_hist")
        return {k: round(float(v), 3) for k, v in out.items()}


def features(hu: np.ndarray, lungs: np.ndarray, affine: np.ndarray) -> Features:
    """Features of a CT volume (nibabel voxel order, RAS ``affine``) and its lung mask."""
    from volseg.data.lung_grid import AxisOrder
    from volseg.quantify import spacing_from_affine

    order = AxisOrder.from_affine(affine)
    spacing = order.spacing(spacing_from_affine(affine))
    hu = np.asarray(order.forward(np.asarray(hu, dtype=np.float32)))
    lungs = np.asarray(order.forward(np.asarray(lungs) > 0))
    values = hu[lungs]
    p10, med, p90 = (float(v) for v in np.percentile(values, [10, 50, 90]))
    body = _body(hu) & ~ndi.binary_dilation(lungs, iterations=2)
    noise, corr = _air_noise(hu, spacing)
    return Features(
        lung_ml=float(lungs.sum()) * float(np.prod(spacing)) / 1000.0,
        lung_hu_p10=p10,
        lung_hu_median=med,
        lung_hu_p90=p90,
        dependent_gradient_hu=_dependent_gradient(hu, lungs),
        vessel_fraction=float((values > -500.0).mean()),
        vessels_per_cm2=_vessel_density(hu, lungs, spacing),
        noise_hu=noise,
        noise_correlation=corr,
        lung_hist=_density(values, _LUNG_BINS),
        body_hist=_density(hu[body], _BODY_BINS),
    )


def distances(a: Features, b: Features) -> dict[str, float]:
    """Distances between two scans' features (0 = alike)."""
    return {
        "lung_hu_w1": wasserstein(a.lung_hist, b.lung_hist, _LUNG_BINS),
        "body_hu_w1": wasserstein(a.body_hist, b.body_hist, _BODY_BINS),
        "dependent_gradient_hu": abs(a.dependent_gradient_hu - b.dependent_gradient_hu),
        "vessel_fraction": abs(a.vessel_fraction - b.vessel_fraction),
        "vessels_per_cm2": abs(a.vessels_per_cm2 - b.vessels_per_cm2),
        "noise_hu": abs(a.noise_hu - b.noise_hu),
        "noise_correlation": abs(a.noise_correlation - b.noise_correlation),
    }


def wasserstein(p: np.ndarray, q: np.ndarray, bins: np.ndarray) -> float:
    """Wasserstein-1 distance (in the bins' unit) between two histograms on ``bins``."""
    width = np.diff(bins)
    cp, cq = np.cumsum(p * width), np.cumsum(q * width)
    return float(np.sum(np.abs(cp - cq) * width))


def _density(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    hist, _ = np.histogram(np.clip(values, bins[0], bins[-1] - 1e-3), bins=bins, density=True)
    return hist


def _body(hu: np.ndarray) -> np.ndarray:
    """The patient: the largest tissue (> -500 HU) component, holes filled per slice."""
    tissue = hu > -500.0
    labels, n = ndi.label(tissue)
    if n == 0:
        return tissue
    body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return np.stack([ndi.binary_fill_holes(s) for s in body])


def _dependent_gradient(hu: np.ndarray, lungs: np.ndarray) -> float:
    """Posterior-fifth minus anterior-fifth median lung HU, per lung side, averaged.

    Arrays are anatomical ``(z, y, x)``: y runs anterior -> posterior, x right -> left.
    """
    xs = np.nonzero(lungs.any(axis=(0, 1)))[0]
    if xs.size == 0:
        return float("nan")
    mid = 0.5 * (xs[0] + xs[-1])
    out = []
    for side in (slice(0, int(mid)), slice(int(mid), lungs.shape[2])):
        lung, h = lungs[:, :, side], hu[:, :, side]
        ys = np.nonzero(lung.any(axis=(0, 2)))[0]
        if ys.size < 5:
            continue
        lo, hi = ys[0], ys[-1]
        fifth = (hi - lo) / 5.0
        y = np.arange(lung.shape[1])[None, :, None]
        ant = lung & (y <= lo + fifth)
        post = lung & (y >= hi - fifth)
        if ant.any() and post.any():
            out.append(float(np.median(h[post]) - np.median(h[ant])))
    return float(np.mean(out)) if out else float("nan")


def _vessel_density(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> float:
    """Vessel cross-sections per cm2 of lung core (anatomical ``(z, y, x)`` arrays)."""
    from volseg.data.lung_fill import ball_mm

    # An in-plane disk: a slice spacing beyond the radius keeps the ball to its own slice.
    disk = ball_mm(CORE_MARGIN_MM, (CORE_MARGIN_MM + 1.0, spacing[1], spacing[2]))
    core = ndi.binary_erosion(lungs, disk, border_value=0)
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = True
    area_cm2 = float(core.sum()) * spacing[1] * spacing[2] / 100.0
    if area_cm2 < 1.0:
        return float("nan")
    _, count = ndi.label((hu > VESSEL_HU) & core, structure=plane)
    return count / area_cm2


def _air_noise(hu: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float, float]:
    """Noise std (HU) and its 1-voxel in-plane correlation in the air around the patient.

    Air is -1100..-900 HU outside the body, at least 5 mm from it and from any value
    outside that range (the scan-circle edge, the table); the slowly varying part (3 mm
    Gaussian) is removed first.
    """
    body = _body(hu)
    air = (hu > -1100.0) & (hu < -900.0) & ~body
    margin = max(1, int(round(5.0 / min(spacing[1:]))))
    plane = np.zeros((1, 3, 3), dtype=bool)
    plane[0] = True
    air = ndi.binary_erosion(air, plane, iterations=margin)
    if air.sum() < 500:
        return float("nan"), float("nan")
    smooth = ndi.gaussian_filter(hu, [0.0, 3.0 / spacing[1], 3.0 / spacing[2]])
    r = np.where(air, hu - smooth, 0.0)
    both = air[:, :, 1:] & air[:, :, :-1]
    a, b = r[:, :, 1:][both], r[:, :, :-1][both]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 100 else float("nan")
    return float(np.std(r[air])), corr
