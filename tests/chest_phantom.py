"""A synthetic chest phantom with known lungs, shared by the lung and predict tests."""

from __future__ import annotations

import numpy as np


def chest_phantom(
    spacing: tuple[float, float, float] = (1.4, 1.4, 8.0),
    shape: tuple[int, int, int] = (200, 160, 36),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chest in (x, y, z) voxel order: body, two lungs with vessels, a dense pleural
    lesion, a trachea, bowel gas below the lungs and a table. Returns (hu, lungs, lesion)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)],
        indexing="ij",
    )
    hu = np.full(shape, -1000.0)
    body = (x / 130) ** 2 + ((y + 5) / 95) ** 2 <= 1
    hu[body] = 40.0
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lungs |= ((x - side * 60) / 45) ** 2 + ((y + 5) / 65) ** 2 + ((z - 40) / 110) ** 2 <= 1
    lungs &= z > -60
    hu[lungs] = -850.0
    vessels = (rng.random(shape) < 0.004) & lungs
    from scipy import ndimage as ndi

    hu[ndi.binary_dilation(vessels, iterations=1) & lungs] = 40.0
    # a pleural lesion: a consolidated core in a ground-glass halo, as in COVID-19
    lesion_r = ((x - 95) / 22) ** 2 + ((y + 5) / 28) ** 2 + ((z - 60) / 45) ** 2
    core = np.clip((1.0 - lesion_r) / 0.5, 0.0, 1.0)  # ground glass blending into solid
    hu[(lesion_r <= 1) & lungs] = (-600.0 + 630.0 * core)[(lesion_r <= 1) & lungs]
    trachea = (x / 9) ** 2 + ((y + 30) / 9) ** 2 <= 1
    hu[trachea & (z > 60) & body] = -1000.0
    bowel = ((x + 40) / 30) ** 2 + ((y + 40) / 20) ** 2 + ((z + 100) / 30) ** 2 <= 1
    hu[bowel & body] = -1000.0
    table = (np.abs(y - 108) < 3) & (np.abs(x) < 120)
    hu[table] = 200.0
    hu += rng.normal(0, 20, shape)
    return hu.astype(np.float32), lungs, (lesion_r <= 1) & lungs
