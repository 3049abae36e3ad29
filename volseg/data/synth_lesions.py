"""COVID-19-like lesions for the synthetic CT, grown to a target share of the lungs.

A lesion "score" field is smooth 3D noise plus biases toward the pleura (sub-pleural), the
back (dependent lung) and the bases, as in COVID-19 pneumonia. Thresholding it at a per-lung
quantile gives multifocal, bilateral, soft-edged patches whose volume hits the target
involvement on the render grid (the caller corrects it for the thick output slices). The
highest-scoring cores become consolidation (−10…+45 HU, unenhanced lung), the rest
ground-glass opacity (−750…−300 HU), in a third of the severe studies with crazy paving
(thickened interlobular septa: a network of lines).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage

from volseg.data.synth_grid import resize, sigmoid, smooth_noise

# Target involvement (%) drawn per category: inside MosMed's bands, away from their edges.
TARGET_PCT: dict[str, tuple[float, float]] = {
    "CT-1": (3.0, 20.0),
    "CT-2": (29.0, 46.0),
    "CT-3": (54.0, 71.0),
    "CT-4": (79.0, 92.0),
}
# Share of the lesion volume that is consolidation, by category (more in severe disease).
CONSOLIDATION_SHARE: dict[str, tuple[float, float]] = {
    "CT-1": (0.03, 0.2),
    "CT-2": (0.1, 0.3),
    "CT-3": (0.2, 0.45),
    "CT-4": (0.3, 0.55),
}


class LungGeometry(Protocol):
    """Where lesions can grow: what the lesion model needs of a chest, synthetic
    (:class:`volseg.data.synth_anatomy.ChestRender`) or real (:mod:`volseg.data.paint`)."""

    lungs: np.ndarray  # bool
    lumen: np.ndarray  # float32 airway lumen fraction (lesions stay out)
    side: np.ndarray  # int8 +1 right lung, -1 left lung
    posterior: np.ndarray  # float32 -1 anterior ... +1 posterior, per lung
    inferior: np.ndarray  # float32 0 apex ... 1 base


@dataclass
class Lesions:
    """Lesions on the render grid."""

    mask: np.ndarray  # bool: lesion voxels (lung, not airway lumen)
    weight: np.ndarray  # float32 0..1 soft blend weight of the lesion into the lung
    hu: np.ndarray  # float32 lesion HU where it is fully developed
    consolidation: np.ndarray  # bool: mostly consolidated part of the mask


def pleural_depth_mm(lungs: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each lung voxel to the lung surface, computed on a ~2.5 mm grid."""
    stride = max(1, int(2.5 // min(spacing[0], spacing[1])))
    coarse = lungs[::stride, ::stride, :]
    dist = ndimage.distance_transform_edt(
        coarse, sampling=(spacing[0] * stride, spacing[1] * stride, spacing[2])
    )
    return resize(dist.astype(np.float32), lungs.shape)


@dataclass
class LesionModel:
    """One study's random disease: where lesions prefer to grow, and how they look."""

    score: np.ndarray  # float32: lesions fill the highest-scoring lung voxels first
    target_pct: float  # involvement to reach on the output grid
    right_bias: float  # right lung's share of the lesion volume relative to its lung share
    softness: float  # edge width in score units
    consolidation_share: float
    ggo_hu: np.ndarray  # float32
    consolidation_hu: np.ndarray  # float32
    septa: np.ndarray | None = None  # float32 0..1 crazy-paving lines, or None


def draw_lesion_model(
    rng: np.random.Generator,
    chest: LungGeometry,
    spacing: tuple[float, float, float],
    category: str,
) -> LesionModel:
    """Draw a target involvement inside ``category``'s band and a lesion score field."""
    shape = chest.lungs.shape
    target = rng.uniform(*TARGET_PCT[category])
    periph = np.exp(-pleural_depth_mm(chest.lungs, spacing) / 12.0)
    score = smooth_noise(rng, shape, spacing, rng.uniform(14.0, 24.0))
    score += 0.45 * smooth_noise(rng, shape, spacing, 7.0)
    score += rng.uniform(1.0, 1.6) * periph
    score += rng.uniform(0.5, 0.9) * chest.posterior
    score += rng.uniform(0.3, 0.6) * chest.inferior
    texture = smooth_noise(rng, shape, spacing, 10.0)
    ggo = np.clip(rng.uniform(-700.0, -450.0) + 45.0 * texture, -750.0, -300.0)
    cons = rng.uniform(-10.0, 45.0) + 12.0 * texture
    septa = None
    if rng.random() < (0.15 if category == "CT-1" else 0.3):
        # Crazy paving: thickened interlobular septa, a polygonal network of lines.
        cells = smooth_noise(rng, shape, spacing, rng.uniform(6.0, 9.0))
        septa = np.clip(1.0 - np.abs(cells) / 0.15, 0.0, 1.0).astype(np.float32)
    return LesionModel(
        score=score,
        target_pct=float(target),
        right_bias=float(rng.uniform(0.75, 1.25)),
        softness=float(rng.uniform(0.12, 0.25)),
        consolidation_share=float(rng.uniform(*CONSOLIDATION_SHARE[category])),
        ggo_hu=ggo.astype(np.float32),
        consolidation_hu=cons.astype(np.float32),
        septa=septa,
    )


def place_to_target(
    model: LesionModel,
    chest: LungGeometry,
    truth_of: Callable[[Lesions], np.ndarray],
    n_lung: int,
    steps: int = 3,
) -> tuple[Lesions, np.ndarray, float]:
    """Lesions whose truth mask (``truth_of``, e.g. the weight cut at one half on the grid the
    mask is written on) fills ``model.target_pct`` % of ``n_lung`` lung voxels, to within
    0.25 %: the share :func:`place_lesions` is asked for is rescaled by target / achieved,
    at most ``steps`` times (the cut and any averaging move the share a little). Returns the
    lesions, their truth mask and the share it fills. The one target fit of the synthetic
    generator and the painter."""
    render_pct = model.target_pct
    for _ in range(steps):
        lesions = place_lesions(model, chest, render_pct)
        truth = truth_of(lesions)
        achieved = 100.0 * float(truth.sum()) / n_lung
        if abs(achieved - model.target_pct) < 0.25 or achieved <= 0:
            break
        render_pct = float(np.clip(render_pct * model.target_pct / achieved, 0.05, 99.0))
    return lesions, truth, achieved


def place_lesions(model: LesionModel, chest: LungGeometry, render_pct: float) -> Lesions:
    """Threshold the score so lesions fill ``render_pct`` % of the lungs on the render grid.

    The volume is split between the lungs (so disease is bilateral) and each lung is cut at
    its own quantile; the top ``consolidation_share`` of the lesion becomes consolidation.
    """
    lungs = chest.lungs
    eligible = lungs & (chest.lumen < 0.5)
    n_lung = int(lungs.sum())
    n_total = int(round(render_pct / 100.0 * n_lung))
    n_right_lung = int((lungs & (chest.side > 0)).sum())
    want_right = int(round(n_total * n_right_lung / n_lung * model.right_bias))
    thr = np.zeros(lungs.shape, dtype=np.float32)
    for s in (1, -1):
        values = model.score[eligible & (chest.side == s)]
        if values.size < 2:  # no lung on this side (a crop): nothing grows there
            thr[chest.side == s] = np.inf
            continue
        want = want_right if s == 1 else n_total - want_right
        want = int(np.clip(want, 1, values.size - 1))
        thr[chest.side == s] = np.partition(values, values.size - want)[values.size - want]
    margin = model.score - thr
    mask = eligible & (margin >= 0)
    weight = sigmoid(margin / model.softness) * lungs
    share = model.consolidation_share
    core_cut = float(np.quantile(margin[mask], 1.0 - share)) if mask.any() else 0.0
    core = sigmoid((margin - core_cut) / (0.5 * model.softness))  # sharper consolidation edge
    ggo = model.ggo_hu
    if model.septa is not None:
        ggo = ggo + (150.0 - ggo) * 0.6 * model.septa  # septa: partial volume of thin lines
    hu = ggo + (model.consolidation_hu - ggo) * core
    return Lesions(
        mask=mask,
        weight=weight.astype(np.float32),
        hu=hu.astype(np.float32),
        consolidation=mask & (core >= 0.75),
    )
