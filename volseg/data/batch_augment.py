"""Batched training augmentation on the batch's device (``finetune.augment_on: device``).

The MONAI chain (:func:`volseg.data.transforms.augment_transforms`) runs per sample in the
DataLoader workers, and on a GPU machine it is what the network waits for (bench/README.md).
Here the dataset only draws each sample's parameters (:func:`draw_params`, from the sample's
own seed, so a batch stays a pure function of ``(seed, index)``); they are collated under
:data:`PARAMS_KEY` and :func:`augment_batch` applies them to the whole batch where it lies.

Same :class:`~volseg.data.transforms.AugmentRecipe` and the same order as the MONAI chain:
flips, the affine, intensity scale, shift, noise. The affine is MONAI's: its matrices
(``create_rotate`` / ``create_scale``) in centred voxel coordinates (as ``RandAffine``:
voxels, not millimetres; a rotation about the slice axis turns the two in-plane axes,
whose spacings are equal in the shipped configs, so it is a rotation in millimetres too),
sampled with ``grid_sample`` as MONAI's torch backend does (``align_corners=False``, zeros
padding; bilinear image, nearest masks). The
random streams differ from MONAI's, so the two paths give different batches for the same
seed, drawn from the same distribution. Noise is drawn on the batch's device from a
generator seeded per sample: reproducible on one device type, different between CPU and
CUDA (their generators differ), as training itself is.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch
import torch.nn.functional as F

from volseg.data.transforms import DEFAULT_AUGMENT, IMAGE_KEY, AugmentRecipe

PARAMS_KEY = "augment"
"""Batch key of the ``(B, len(Param))`` float64 parameters (stays on the CPU)."""


class Param(IntEnum):
    """Columns of one sample's parameter vector (flags are 0 or 1; angle in radians)."""

    FLIP_0 = 0
    FLIP_1 = 1
    FLIP_2 = 2
    AFFINE = 3
    ANGLE = 4
    SCALE_0 = 5
    SCALE_1 = 6
    SCALE_2 = 7
    INTENSITY_SCALE_ON = 8
    INTENSITY_SCALE = 9
    SHIFT_ON = 10
    SHIFT = 11
    NOISE_ON = 12
    NOISE_STD = 13
    NOISE_SEED = 14


FLIPS = (Param.FLIP_0, Param.FLIP_1, Param.FLIP_2)
SCALES = (Param.SCALE_0, Param.SCALE_1, Param.SCALE_2)


def draw_params(rng: np.random.Generator, recipe: AugmentRecipe = DEFAULT_AUGMENT) -> torch.Tensor:
    """One sample's parameters ``(len(Param),)`` float64, every value drawn whatever the flags
    (a fixed number of draws from ``rng``)."""
    p = np.zeros(len(Param))
    p[list(FLIPS)] = rng.random(3) < recipe.flip_prob
    p[Param.AFFINE] = rng.random() < recipe.affine_prob
    rot = np.deg2rad(recipe.rotate_deg)
    p[Param.ANGLE] = rng.uniform(-rot, rot)
    p[list(SCALES)] = 1.0 + rng.uniform(-recipe.scale, recipe.scale, 3)
    on = rng.random(3) < recipe.intensity_prob
    p[[Param.INTENSITY_SCALE_ON, Param.SHIFT_ON, Param.NOISE_ON]] = on
    p[Param.INTENSITY_SCALE] = rng.uniform(-recipe.intensity_scale, recipe.intensity_scale)
    p[Param.SHIFT] = rng.uniform(-recipe.intensity_shift, recipe.intensity_shift)
    p[Param.NOISE_STD] = rng.uniform(0.0, recipe.noise_std)
    p[Param.NOISE_SEED] = rng.integers(2**31)
    return torch.from_numpy(p)


def identity_params() -> torch.Tensor:
    """Parameters that leave a sample unchanged (unit scales, every step off)."""
    p = torch.zeros(len(Param), dtype=torch.float64)
    p[list(SCALES)] = 1.0
    return p


def affine_theta(
    angle: float, scales: tuple[float, float, float], shape: tuple[int, ...]
) -> torch.Tensor:
    """``F.affine_grid``'s ``(3, 4)`` matrix for MONAI's rotation about the slice axis by
    ``angle`` after scaling by ``scales``, on a spatial ``shape`` ``(D, H, W)``.

    MONAI maps centred voxel coordinates of the output to those of the input (``R @ S``),
    then normalises axis ``k`` by ``2 / n_k``; ``affine_grid`` wants the same map between
    normalised coordinates, in reversed axis order (``W, H, D``).
    """
    from monai.transforms.utils import create_rotate, create_scale

    voxels = create_rotate(3, (0.0, 0.0, angle)) @ create_scale(3, scales)
    norm = np.diag([2.0 / max(n, 2) for n in shape])
    theta = norm @ voxels[:3, :3] @ np.linalg.inv(norm)
    theta = theta[::-1, ::-1]
    return torch.from_numpy(np.concatenate([theta, np.zeros((3, 1))], axis=1).copy())


def _flipped(x: torch.Tensor, flips: list[list[int]]) -> torch.Tensor:
    if not any(flips):
        return x
    return torch.stack([x[b].flip(dims) if dims else x[b] for b, dims in enumerate(flips)])


def _warped(x: torch.Tensor, grid: torch.Tensor, rows: torch.Tensor, mode: str) -> torch.Tensor:
    moved = F.grid_sample(
        x[rows], grid.to(x.dtype), mode=mode, padding_mode="zeros", align_corners=False
    )
    return x.index_copy(0, rows, moved)


def _add_noise_(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Adds, in place, per-sample ``N(0, std)`` noise, each sample's from its own generator
    seeded with its ``NOISE_SEED``, on the image's device."""
    for b in torch.nonzero(params[:, Param.NOISE_ON] > 0).flatten().tolist():
        gen = torch.Generator(device=image.device).manual_seed(int(params[b, Param.NOISE_SEED]))
        draw = torch.randn(image.shape[1:], generator=gen, device=image.device, dtype=image.dtype)
        image[b] += draw * float(params[b, Param.NOISE_STD])
    return image


def _scales(row: torch.Tensor) -> tuple[float, float, float]:
    return tuple(float(row[s]) for s in SCALES)  # type: ignore[return-value]


def _intensity(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """MONAI's ``x * (1 + f)``, then ``x + o``, then noise; an off step adds exactly 0."""
    shape = (len(params),) + (1,) * (image.ndim - 1)
    factor = params[:, Param.INTENSITY_SCALE] * params[:, Param.INTENSITY_SCALE_ON]
    offset = params[:, Param.SHIFT] * params[:, Param.SHIFT_ON]
    image = image * (1.0 + factor).to(image.device, image.dtype).view(shape)
    image = image + offset.to(image.device, image.dtype).view(shape)  # a new tensor
    return _add_noise_(image, params)


def augment_batch(batch: dict[str, torch.Tensor], params: torch.Tensor) -> dict[str, torch.Tensor]:
    """``batch`` augmented with ``params`` ``(B, len(Param))`` (CPU), on the batch's device.

    Every ``(B, C, D, H, W)`` entry is flipped and warped (``image`` bilinear, the rest:
    masks, voxel weights, nearest, so they keep their values); intensity changes and noise
    act on ``image``. Other entries (a per-sample scalar weight) pass through. Shapes kept.
    """
    params = params.detach().to("cpu", torch.float64)
    out = dict(batch)
    spatial = [k for k, v in batch.items() if v.ndim == 5]
    if IMAGE_KEY not in spatial or len(params) != len(batch[IMAGE_KEY]):
        raise ValueError(f"augment_batch needs {IMAGE_KEY!r} (B, C, D, H, W) and B parameters")
    flips = [[1 + a for a, f in enumerate(FLIPS) if row[f] > 0] for row in params]
    rows = torch.nonzero(params[:, Param.AFFINE] > 0).flatten()
    grid = None
    if len(rows):
        shape = tuple(batch[IMAGE_KEY].shape[2:])
        theta = torch.stack(
            [affine_theta(float(params[r, Param.ANGLE]), _scales(params[r]), shape) for r in rows]
        )
        device = batch[IMAGE_KEY].device
        size = (len(rows), 1, *shape)
        grid = F.affine_grid(theta.to(device, torch.float32), list(size), align_corners=False)
    for key in spatial:
        out[key] = _flipped(batch[key], flips)
    if grid is not None:
        rows = rows.to(grid.device)
        out[IMAGE_KEY] = _warped(out[IMAGE_KEY], grid, rows, "bilinear")
        masks = [k for k in spatial if k != IMAGE_KEY]
        if masks:  # one call for all: grid_sample's cost hardly grows with channels
            warped = _warped(torch.cat([out[k] for k in masks], dim=1), grid, rows, "nearest")
            parts = warped.split([out[k].shape[1] for k in masks], dim=1)
            out.update(zip(masks, parts, strict=True))
    out[IMAGE_KEY] = _intensity(out[IMAGE_KEY], params)
    return out
