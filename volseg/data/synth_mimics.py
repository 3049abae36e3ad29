"""Non-COVID findings for the synthetic CT: what real models mistake for lesions.

Drawn per study whatever its category (healthy CT-0 scans get them too), on the render
grid, and never part of the lesion truth (probability per study in brackets):

- dependent atelectasis (35 %): a smooth subpleural band of -550..-150 HU in the posterior lung
  bases of a supine patient;
- emphysema (20 %): clusters of near-air (-990..-960 HU) low-density lung, upper lobes first;
- nodules (30 %): 1-4 solid spheres, 2-8 mm radius;
- fibrotic bands (20 %): thin linear opacities at the bases;
- pleural effusion (10 %): dependent fluid (5-25 HU) in the pleural space, which displaces the
  lung (the lung truth excludes it);
- beam-hardening and motion streaks (15 %): bright and dark lines through a few slices, drawn on
  the final image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volseg.data.synth_anatomy import TISSUE, ChestRender
from volseg.data.synth_grid import sigmoid, smooth_noise, world_axes
from volseg.data.synth_lesions import pleural_depth_mm
from volseg.data.synth_trees import Segment, rasterize_tubes


@dataclass
class Mimics:
    """Blend of non-COVID findings into the lung, on the render grid."""

    weight: np.ndarray  # float32 0..1, inside the lungs
    hu: np.ndarray  # float32 HU the blend goes towards
    names: list[str] = field(default_factory=list)


def add_effusion(rng: np.random.Generator, chest: ChestRender, spacing, p: float = 0.1) -> bool:
    """With probability ``p``, fill the dependent pleural space of one or both lungs with
    fluid: the lung truth shrinks by it (in place on ``chest``)."""
    if rng.random() >= p:
        return False
    sides = [1, -1] if rng.random() < 0.5 else [int(rng.choice([1, -1]))]
    level = rng.uniform(0.35, 0.8)  # posterior level reached at the base
    fluid = np.zeros(chest.lungs.shape, dtype=bool)
    for s in sides:
        # Deeper at the base, tapering off up the back: a meniscus in the supine patient.
        reach = level * np.clip(chest.inferior - 0.35, 0.0, 1.0) / 0.65
        fluid |= (chest.side == s) & (chest.posterior > 1.0 - 2.0 * reach)
    if fluid.sum() < 0.01 * chest.lungs.sum():
        return False
    hu = rng.uniform(5.0, 25.0)
    chest.hu[fluid] = hu
    chest.labels[fluid] = TISSUE["soft"]
    chest.lungs &= ~fluid
    chest.side[fluid] = 0
    return True


def draw_mimics(
    rng: np.random.Generator, chest: ChestRender, affine: np.ndarray, spacing
) -> Mimics:
    """Atelectasis, emphysema, nodules and fibrotic bands for one study (each optional)."""
    shape = chest.lungs.shape
    weight = np.zeros(shape, dtype=np.float32)
    target = np.zeros(shape, dtype=np.float32)
    names: list[str] = []
    lungs = chest.lungs

    def blend(w: np.ndarray, hu, name: str) -> None:
        w = (np.asarray(w, dtype=np.float32) * lungs).astype(np.float32)
        take = w > weight
        target[take] = np.broadcast_to(np.asarray(hu, dtype=np.float32), shape)[take]
        np.maximum(weight, w, out=weight)
        names.append(name)

    if rng.random() < 0.35:
        depth = pleural_depth_mm(lungs, spacing)
        thick = rng.uniform(3.0, 10.0)
        base = rng.uniform(0.3, 0.6)
        w = (
            np.clip((thick - depth) / 2.0, 0.0, 1.0)
            * np.clip((chest.posterior - 0.3) / 0.3, 0.0, 1.0)
            * np.clip((chest.inferior - base) / 0.2, 0.0, 1.0)
        )
        blend(w, rng.uniform(-550.0, -150.0), "atelectasis")
    if rng.random() < 0.2:
        field_ = smooth_noise(rng, shape, spacing, rng.uniform(5.0, 9.0))
        upper = lungs & (chest.inferior < 0.65)
        if upper.any():
            share = rng.uniform(0.03, 0.12)
            thr = float(np.quantile(field_[upper], 1.0 - share))
            w = sigmoid((field_ - thr) / 0.1) * (chest.inferior < 0.7)
            blend(w, rng.uniform(-990.0, -960.0), "emphysema")
    if rng.random() < 0.3:
        blend(_nodules(rng, chest, affine, spacing), rng.uniform(0.0, 60.0), "nodules")
    if rng.random() < 0.2:
        blend(_bands(rng, chest, affine, spacing), rng.uniform(-200.0, 20.0), "fibrotic bands")
    return Mimics(weight=weight, hu=target, names=names)


def _lung_points(rng, chest: ChestRender, affine, n: int, where: np.ndarray) -> np.ndarray:
    """``n`` random world points inside ``where`` (n x 3, mm)."""
    idx = np.argwhere(where)
    if idx.size == 0:
        return np.zeros((0, 3))
    pick = idx[rng.integers(0, len(idx), size=n)].astype(np.float64)
    return pick @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def _nodules(rng, chest: ChestRender, affine, spacing) -> np.ndarray:
    x, y, z = world_axes(affine, chest.lungs.shape)
    pv = float(min(spacing[0], spacing[1]))
    out = np.zeros(chest.lungs.shape, dtype=np.float32)
    for centre in _lung_points(rng, chest, affine, int(rng.integers(1, 5)), chest.lungs):
        r = rng.uniform(2.0, 8.0)
        dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
        np.maximum(out, np.clip((r - dist) / pv + 0.5, 0.0, 1.0), out=out)
    return out


def _bands(rng, chest: ChestRender, affine, spacing) -> np.ndarray:
    pv = float(min(spacing[0], spacing[1]))
    basal = chest.lungs & (chest.inferior > 0.55)
    segments = []
    for start in _lung_points(rng, chest, affine, int(rng.integers(1, 4)), basal):
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle), rng.uniform(-0.3, 0.3)])
        end = start + direction / np.linalg.norm(direction) * rng.uniform(20.0, 60.0)
        r = rng.uniform(0.8, 1.8)
        segments.append(Segment(start, end, r, r, 0))
    return rasterize_tubes(segments, affine, chest.lungs.shape, pv)


def add_streaks(
    rng: np.random.Generator, image: np.ndarray, spacing, p: float = 0.15
) -> np.ndarray:
    """With probability ``p``, bright and dark streaks (beam hardening, motion) through a
    run of slices, radiating from a point near the middle of the body; float32 image."""
    if rng.random() >= p:
        return image
    nx, ny, nz = image.shape
    z0 = int(rng.integers(0, nz))
    z1 = min(nz, z0 + max(1, int(round(rng.uniform(0.05, 0.3) * nz))))
    cx = rng.uniform(0.35, 0.65) * nx
    cy = rng.uniform(0.35, 0.65) * ny
    xs = (np.arange(nx)[:, None] - cx) * spacing[0]
    ys = (np.arange(ny)[None, :] - cy) * spacing[1]
    r = np.hypot(xs, ys)
    pattern = np.zeros((nx, ny), dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        angle = rng.uniform(0.0, np.pi)
        dist = np.abs(xs * np.sin(angle) - ys * np.cos(angle))
        width = rng.uniform(0.8, 2.5)
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(20.0, 80.0)
        pattern += amp * np.exp(-((dist / width) ** 2)) * np.exp(-r / rng.uniform(80.0, 200.0))
    out = image.copy()
    out[:, :, z0:z1] += pattern[:, :, None]
    return out
