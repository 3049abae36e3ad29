"""Scanner, protocol and patient variety for the synthetic CT: one "site" per scan group.

A *site* is a scanner with its protocol (noise level, reconstruction kernel, contrast
phase, padding outside the reconstruction circle); a *patient* brings the state of the
lungs on the day (inspiration depth, dependent density) and a body size. A dataset draws a
few sites and gives every study one of them, so labeled, unlabeled and test scans need not
come from one scanner; the patient state is drawn per study.

Ranges, each checked against the real CTs in ``../shared/data/real`` with
``bench/realism.py`` (lung-HU medians -874, -789 and -738 HU; dependent gradients 29-129 HU;
air noise 7-14 HU at about 1 mm voxels):

- noise: standard deviation at a 1 mm^3 voxel, 15-60 HU, falling as volume^-0.4 for
  larger voxels (partly correlated noise averages down more slowly than white noise);
- kernel: in-plane Gaussian sigma 0.3 mm (sharp) to 0.8 mm (soft);
- contrast: 40 % of sites enhance the blood to 150-280 HU, else 35-50 HU;
- padding: 60 % of sites pad outside the reconstruction circle with -1024, -2048 or -3024;
- lung density: healthy parenchyma -900 (deep inspiration) to -740 HU (shallow, as in the
  4D-Lung chest: median -702 HU at the demo's voxels), 15-120 HU denser
  at the most dependent (posterior) lung, 0-40 HU denser at the bases; pulmonary vessel
  calibre 0.7-1.1 x (vessel volume fractions 5-21 % at 2.8 x 2.8 x 10 mm in the real CTs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScanSite:
    """Scanner and protocol shared by the studies of one site."""

    noise_hu: float  # noise std at a 1 mm^3 voxel
    kernel_mm: float  # in-plane Gaussian sigma of the reconstruction kernel
    blood_hu: float  # heart, aorta and pulmonary vessels
    padding_hu: float | None  # value outside the reconstruction circle, or None
    voxel_mm: tuple[float, float, float] | None = None  # reconstructed voxel; None: the preset's

    def noise_at(self, voxel_mm3: float) -> float:
        """Noise std (HU) at a voxel of ``voxel_mm3``."""
        return self.noise_hu * float(voxel_mm3) ** -0.4


@dataclass(frozen=True)
class PatientState:
    """The lungs and body of one study on the day of the scan."""

    lung_hu: float  # healthy parenchyma, anterior, mid-lung
    dependent_hu: float  # extra HU of the most dependent lung
    basal_hu: float  # extra HU at the bases
    texture_hu: float  # amplitude of the lobular texture
    habitus: float  # body size factor
    vessel_scale: float  # calibre of the pulmonary vessel trees


def draw_site(rng: np.random.Generator) -> ScanSite:
    """One scanner and protocol."""
    contrast = rng.random() < 0.4
    padding = None
    if rng.random() < 0.6:
        padding = float(rng.choice([-1024.0, -2048.0, -3024.0]))
    return ScanSite(
        noise_hu=float(rng.uniform(15.0, 60.0)),
        kernel_mm=float(rng.uniform(0.3, 0.8)),
        blood_hu=float(rng.uniform(150.0, 280.0) if contrast else rng.uniform(35.0, 50.0)),
        padding_hu=padding,
    )


def draw_patient(rng: np.random.Generator) -> PatientState:
    """One patient's lung state and body size."""
    return PatientState(
        lung_hu=float(rng.uniform(-900.0, -740.0)),
        dependent_hu=float(rng.uniform(15.0, 120.0)),
        basal_hu=float(rng.uniform(0.0, 40.0)),
        texture_hu=float(rng.uniform(8.0, 20.0)),
        habitus=float(rng.uniform(0.9, 1.12)),
        vessel_scale=float(rng.uniform(0.7, 1.1)),
    )
