"""MONAI dictionary transform chains for training, on the preprocessed (cached) grid.

Keys: ``image`` (CT windowed to [0, 1]), ``label`` (lesion mask) and ``lungs`` (lung mask).
Preprocessing itself (orientation, spacing, body crop, window) is the recipe's
(:mod:`volseg.recipe`), shared by the cache and the predictor.

* :func:`train_transforms` — random patch crops biased to lesions (or to the lungs when
  there is no label), then :func:`augment_transforms`.
* :func:`augment_transforms` — flips, small rotations/scaling, intensity jitter, with the
  probabilities and ranges of an :class:`AugmentRecipe` (shared with the batched device-side
  path, :mod:`volseg.data.batch_augment`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGE_KEY = "image"
MASK_KEYS = ("label", "lungs")


def _check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    keys = tuple(keys)
    if IMAGE_KEY not in keys:
        raise ValueError(f"keys must include {IMAGE_KEY!r}, got {keys}")
    unknown = [k for k in keys if k != IMAGE_KEY and k not in MASK_KEYS]
    if unknown:
        raise ValueError(f"unknown keys {unknown}; expected {IMAGE_KEY!r} and {MASK_KEYS}")
    return keys


@dataclasses.dataclass(frozen=True)
class AugmentRecipe:
    """Probabilities and ranges of the training augmentation: one recipe for both paths,
    the per-sample MONAI chain (:func:`augment_transforms`) and the batched one on the
    device (:mod:`volseg.data.batch_augment`), so switching paths keeps the distribution.

    Each step is applied independently with its probability: a flip per spatial axis
    (``flip_prob``); one affine (``affine_prob``) rotating about the slice axis by up to
    ``rotate_deg`` degrees either way and scaling each axis by a factor in
    ``1 ± scale``; on the image only, ``x * (1 + f)`` with ``|f| <= intensity_scale``,
    ``x + o`` with ``|o| <= intensity_shift`` and Gaussian noise of a standard deviation
    drawn from ``[0, noise_std]`` (MONAI's ``sample_std``), each with ``intensity_prob``.
    Intensities are in units of the [0, 1] HU window.
    """

    flip_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_std: float = 0.02


DEFAULT_AUGMENT = AugmentRecipe()


def augment_transforms(
    keys: Sequence[str] = ("image", "label", "lungs"),
    recipe: AugmentRecipe = DEFAULT_AUGMENT,
    *,
    extra_nearest: Sequence[str] = (),
):
    """Random augmentation for patches on the preprocessed grid (channel-first tensors).

    Spatial transforms (flips on every axis, small rotations about the slice axis and
    per-axis scaling) act on all ``keys``; masks and ``extra_nearest`` keys use
    nearest-neighbour. Intensity scale/shift and Gaussian noise act on ``image`` only.
    Shapes are kept, so patches stay batchable. Ranges and probabilities: ``recipe``.
    """
    from monai.transforms import (
        Compose,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = tuple(keys) + tuple(k for k in extra_nearest if k not in keys)
    modes = ["bilinear" if k == IMAGE_KEY else "nearest" for k in keys]
    rot = float(np.deg2rad(recipe.rotate_deg))
    scale = recipe.scale
    steps: list[Any] = [
        RandFlipd(keys=keys, prob=recipe.flip_prob, spatial_axis=a) for a in range(3)
    ]
    steps.append(
        RandAffined(
            keys=keys,
            prob=recipe.affine_prob,
            rotate_range=(0.0, 0.0, rot),
            scale_range=(scale, scale, scale),
            mode=modes,
            padding_mode="zeros",
        )
    )
    if IMAGE_KEY in keys:
        p = recipe.intensity_prob
        steps += [
            RandScaleIntensityd(keys=IMAGE_KEY, factors=recipe.intensity_scale, prob=p),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=recipe.intensity_shift, prob=p),
            RandGaussianNoised(keys=IMAGE_KEY, prob=p, mean=0.0, std=recipe.noise_std),
        ]
    return Compose(steps)


def train_transforms(
    patch_size: Sequence[int],
    *,
    labeled: bool = True,
    pos_fraction: float = 0.67,
    num_samples: int = 1,
    augment: bool = True,
    keys: Sequence[str] = ("image", "label", "lungs"),
):
    """Training chain on preprocessed data: pad, lesion-biased random crop, augmentation.

    With ``labeled``, ``pos_fraction`` of the crops are centred on a lesion voxel and the
    rest anywhere (``RandCropByPosNegLabeld``); without labels every crop is centred inside
    the lungs (``lungs`` is then used as the crop label). Shapes of the output patches are
    ``patch_size``; volumes smaller than the patch are zero-padded first.
    """
    from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd

    if not 0.0 <= pos_fraction <= 1.0:
        raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    keys = _check_keys(keys)
    size = tuple(int(p) for p in patch_size)
    label_key = "label" if labeled else "lungs"
    if label_key not in keys:
        raise ValueError(f"keys must include {label_key!r} for this crop, got {keys}")
    pos, neg = (pos_fraction, 1.0 - pos_fraction) if labeled else (1.0, 0.0)
    steps: list[Any] = [
        SpatialPadd(keys=keys, spatial_size=size),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=label_key,
            spatial_size=size,
            pos=pos,
            neg=neg,
            num_samples=num_samples,
        ),
    ]
    if augment:
        steps.append(augment_transforms(keys))
    return Compose(steps)
