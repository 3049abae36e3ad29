"""MONAI dictionary transform chains, one place per purpose.

Keys: ``image`` (CT in HU), optional ``label`` (lesion mask) and ``lungs`` (lung mask).

* :func:`preprocess_transforms` — deterministic: load, channel first, orient to RAS, resample
  to the configured spacing, crop to the body, window HU to [0, 1]. Every geometric step is
  invertible (``Invertd`` / :func:`inverse_transform`), so predictions made on the
  preprocessed grid go back to the source grid exactly.
* :func:`train_transforms` — on preprocessed data: random patch crops biased to lesions
  (or to the lungs when there is no label), then :func:`augment_transforms`.
* :func:`eval_transforms` — preprocessing only.

Geometry always comes from the affine (``Orientationd`` / ``Spacingd``), never from
hand-flipped arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TRANSFORM_VERSION = 1
"""Bump when the preprocessing chain changes: it is part of the cache key."""

BODY_HU = -500.0
"""Voxels above this HU count as body for the foreground crop (air and lungs are below)."""
CROP_MARGIN = 4
"""Voxels kept around the body bounding box."""

IMAGE_KEY = "image"
MASK_KEYS = ("label", "lungs")


class AboveThreshold:
    """Picklable ``select_fn`` for ``CropForegroundd``: voxels strictly above a value.

    If no voxel is above it (not a CT in HU, or an empty scan) everything is selected, so
    the crop keeps the whole volume instead of producing an empty one.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: Any) -> Any:
        selected = x > self.threshold
        return selected if bool(selected.any()) else selected | ~selected

    def __repr__(self) -> str:
        return f"AboveThreshold({self.threshold})"


def _nifti_loader(keys: Sequence[str]) -> Any:
    """MONAI's ``LoadImaged`` with the NIfTI reader. MONAI also builds every other reader it
    can as a fallback; with pydicom installed (highdicom needs it) its GPU DICOM reader then
    warns twice that nvImageCodec is missing, on every call, about files we never give it."""
    import logging
    import warnings

    from monai.transforms import LoadImaged

    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            return LoadImaged(keys=keys, reader="NibabelReader", image_only=False)
    finally:
        plugin_log.setLevel(level)


def _check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    keys = tuple(keys)
    if IMAGE_KEY not in keys:
        raise ValueError(f"keys must include {IMAGE_KEY!r}, got {keys}")
    unknown = [k for k in keys if k != IMAGE_KEY and k not in MASK_KEYS]
    if unknown:
        raise ValueError(f"unknown keys {unknown}; expected {IMAGE_KEY!r} and {MASK_KEYS}")
    return keys


def preprocessing_settings(
    spacing: Sequence[float],
    hu_window: Sequence[float],
    *,
    body_hu: float = BODY_HU,
    margin: int = CROP_MARGIN,
) -> dict[str, Any]:
    """Everything that determines the preprocessed arrays (used to key the cache)."""
    return {
        "spacing": [float(s) for s in spacing],
        "hu_window": [float(h) for h in hu_window],
        "body_hu": float(body_hu),
        "crop_margin": int(margin),
        "orientation": "RAS",
        "version": TRANSFORM_VERSION,
    }


def preprocess_transforms(
    spacing: Sequence[float],
    hu_window: Sequence[float],
    keys: Sequence[str] = ("image",),
    *,
    load: bool = True,
    body_hu: float = BODY_HU,
    margin: int = CROP_MARGIN,
):
    """Deterministic chain: load → RAS → ``spacing`` mm → body crop → HU window to [0, 1].

    ``keys``: ``image`` plus any of ``label``/``lungs`` (resampled nearest-neighbour).
    ``load=False`` leaves out ``LoadImaged`` for data already loaded as MetaTensors. The crop
    uses HU (``body_hu``) before windowing, so it does not depend on the window.
    """
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    keys = _check_keys(keys)
    lo, hi = (float(v) for v in hu_window)
    if lo >= hi:
        raise ValueError(f"hu_window lower bound must be below upper bound, got {hu_window}")
    modes = ["bilinear" if k == IMAGE_KEY else "nearest" for k in keys]
    steps: list[Any] = []
    if load:
        steps.append(_nifti_loader(keys))
    steps += [
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=tuple(float(s) for s in spacing), mode=modes),
        CropForegroundd(
            keys=keys,
            source_key=IMAGE_KEY,
            select_fn=AboveThreshold(body_hu),
            margin=int(margin),
            allow_smaller=True,
        ),
        ScaleIntensityRanged(keys=IMAGE_KEY, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys=keys, dtype=np.float32, track_meta=True),
    ]
    return Compose(steps)


def eval_transforms(
    spacing: Sequence[float], hu_window: Sequence[float], keys: Sequence[str] = ("image",)
):
    """Evaluation / inference chain: preprocessing only (no randomness)."""
    return preprocess_transforms(spacing, hu_window, keys)


def inverse_transform(preprocess, keys: Sequence[str] = ("pred",), orig_key: str = IMAGE_KEY):
    """``Invertd`` that maps ``keys`` from the preprocessed grid back to the source grid.

    Nearest-neighbour for every key (binary masks); probabilities should be inverted with
    ``Invertd(..., nearest_interp=False)`` directly.
    """
    from monai.transforms import Invertd

    return Invertd(
        keys=list(keys),
        transform=preprocess,
        orig_keys=[orig_key] * len(keys),
        nearest_interp=True,
        to_tensor=True,
    )


def augment_transforms(
    keys: Sequence[str] = ("image", "label", "lungs"),
    *,
    flip_prob: float = 0.5,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    affine_prob: float = 0.3,
    intensity_prob: float = 0.5,
    noise_std: float = 0.02,
    extra_nearest: Sequence[str] = (),
):
    """Random augmentation for patches on the preprocessed grid (channel-first tensors).

    Spatial transforms (flips on every axis, small rotations about the slice axis and
    isotropic-ish scaling) act on all ``keys``; masks and ``extra_nearest`` keys use
    nearest-neighbour. Intensity scale/shift and Gaussian noise act on ``image`` only.
    Shapes are kept, so patches stay batchable.
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
    rot = float(np.deg2rad(rotate_deg))
    steps: list[Any] = [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=a) for a in range(3)]
    steps.append(
        RandAffined(
            keys=keys,
            prob=affine_prob,
            rotate_range=(0.0, 0.0, rot),
            scale_range=(scale, scale, scale),
            mode=modes,
            padding_mode="zeros",
        )
    )
    if IMAGE_KEY in keys:
        steps += [
            RandScaleIntensityd(keys=IMAGE_KEY, factors=0.1, prob=intensity_prob),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=0.05, prob=intensity_prob),
            RandGaussianNoised(keys=IMAGE_KEY, prob=intensity_prob, mean=0.0, std=noise_std),
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
