"""Synthetic lesion painting: the restoration target that teaches the GAN generator.

Healthy lung patches get random lesion-like blobs (ground-glass opacity and consolidation);
the generator learns to map the corrupted patch back to the clean one. Blob shapes are
ellipsoids whose boundary is perturbed by a smooth 3D random field (a low-resolution noise
grid upsampled trilinearly) and thresholded with a sigmoid edge, so they look irregular and
have soft borders. Blob centres can favour the lung periphery (``pleural_prob``): COVID-19
opacities are mostly peripheral and sub-pleural, and a generator that has only seen blobs
in mid-lung leaves pleura-based lesions in place (they look like chest wall). Everything is
batched torch code on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from volseg.models.ushape import check_input


def _pair(value: Sequence[float], name: str, low: float | None = None) -> tuple[float, float]:
    items = tuple(float(v) for v in value)
    if len(items) != 2 or items[0] > items[1] or (low is not None and items[0] < low):
        raise ValueError(f"{name} must be an ordered (min, max) pair, got {value!r}")
    return items  # type: ignore[return-value]


class LesionCorruptor:
    """Paint lesion-like blobs into lung CT patches scaled to [0, 1].

    Args:
        blobs: (min, max) number of blobs per patch.
        radius_mm: (min, max) blob radius in mm, drawn log-uniformly (many small, few large).
        spacing: voxel size in mm along the three axes, so blobs are round in physical space.
        strength: (min, max) blend weight of a blob's core (1 replaces the tissue entirely).
        consolidation_prob: chance that a blob is consolidation rather than ground glass.
        ggo_hu, consolidation_hu: HU ranges of the two lesion kinds.
        hu_window: the [low, high] HU window that was mapped to [0, 1].
        irregularity: how strongly the smooth noise field deforms the blob boundary.
        edge: width of the sigmoid edge, as a fraction of the radius.
        texture: std of the fine intensity texture added inside blobs (in [0, 1] units).
        noise_mm: cell size of the low-resolution shape-noise grid in mm.
        pleural_prob: chance that a blob's centre is drawn from the lung rim (lung voxels
            within ``pleural_mm`` of non-lung tissue inside the patch) instead of the whole
            lung; the patch's own faces do not count as a border.
        pleural_mm: depth of that rim in mm.

    ``corrupt(x, lung_mask, generator)`` returns ``(corrupted, blob_mask)`` where
    ``blob_mask`` ``(B, 1, D, H, W)`` in [0, 1] is the blend weight actually applied: zero
    outside the lung and wherever nothing changed, so ``blob_mask > 0`` marks corrupted voxels.
    """

    def __init__(
        self,
        *,
        blobs: Sequence[int] = (1, 4),
        radius_mm: Sequence[float] = (4.0, 20.0),
        spacing: Sequence[float] = (1.5, 1.5, 5.0),
        strength: Sequence[float] = (0.6, 1.0),
        consolidation_prob: float = 0.3,
        ggo_hu: Sequence[float] = (-700.0, -300.0),
        consolidation_hu: Sequence[float] = (-100.0, 50.0),
        hu_window: Sequence[float] = (-1000.0, 400.0),
        irregularity: float = 0.4,
        edge: float = 0.12,
        texture: float = 0.03,
        noise_mm: float = 12.0,
        pleural_prob: float = 0.0,
        pleural_mm: float = 6.0,
    ) -> None:
        lo_hi = tuple(int(b) for b in blobs)
        if len(lo_hi) != 2 or lo_hi[0] < 0 or lo_hi[0] > lo_hi[1] or lo_hi[1] < 1:
            raise ValueError(
                f"blobs must be an ordered (min, max) pair with max >= 1, got {blobs!r}"
            )
        self.blobs = lo_hi
        self.radius_mm = _pair(radius_mm, "radius_mm", low=1e-3)
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
        self.strength = _pair(strength, "strength", low=0.0)
        if self.strength[1] > 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {strength!r}")
        if not 0.0 <= consolidation_prob <= 1.0:
            raise ValueError(f"consolidation_prob must be in [0, 1], got {consolidation_prob}")
        self.consolidation_prob = consolidation_prob
        window = _pair(hu_window, "hu_window")
        if window[0] == window[1]:
            raise ValueError(f"hu_window must have low < high, got {hu_window!r}")
        self.hu_window = window
        self.ggo = tuple(self._scale(v) for v in _pair(ggo_hu, "ggo_hu"))
        self.consolidation = tuple(
            self._scale(v) for v in _pair(consolidation_hu, "consolidation_hu")
        )
        for name, value in (("irregularity", irregularity), ("texture", texture)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if edge <= 0 or noise_mm <= 0:
            raise ValueError("edge and noise_mm must be positive")
        self.irregularity = irregularity
        self.edge = edge
        self.texture = texture
        self.noise_mm = noise_mm
        if not 0.0 <= pleural_prob <= 1.0:
            raise ValueError(f"pleural_prob must be in [0, 1], got {pleural_prob}")
        if pleural_mm <= 0:
            raise ValueError(f"pleural_mm must be positive, got {pleural_mm}")
        self.pleural_prob = pleural_prob
        self.pleural_mm = pleural_mm

    def _scale(self, hu: float) -> float:
        lo, hi = self.hu_window
        return min(max((hu - lo) / (hi - lo), 0.0), 1.0)

    def __call__(
        self, x: torch.Tensor, lung_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.corrupt(x, lung_mask, generator)

    def corrupt(
        self, x: torch.Tensor, lung_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, 1, D, H, W)`` in [0, 1] and its lung mask -> ``(corrupted, blob_mask)``.

        Random draws come from ``generator`` (on its own device; results are moved to ``x``'s
        device), so a seeded generator reproduces the same corruption.
        """
        check_input(x, 1, type(self).__name__)
        if lung_mask.shape != x.shape:
            raise ValueError(
                f"lung_mask shape {tuple(lung_mask.shape)} must equal image shape {tuple(x.shape)}"
            )
        b, _, d, h, w = x.shape
        k = self.blobs[1]
        rdev = generator.device if generator is not None else x.device
        lung = lung_mask.to(device=x.device) > 0

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=rdev)

        # Blob count, centres (lung voxels), radii, strength and intensity per (sample, blob).
        count = torch.randint(
            self.blobs[0], self.blobs[1] + 1, (b,), generator=generator, device=rdev
        )
        weights = lung.flatten(1).to(device=rdev, dtype=torch.float32)
        has_lung = weights.sum(1) > 0
        weights[~has_lung] = 1.0
        idx = torch.multinomial(weights, k, replacement=True, generator=generator)
        if self.pleural_prob > 0:
            rim = self.lung_rim(lung).flatten(1).to(device=rdev, dtype=torch.float32)
            has_rim = rim.sum(1) > 0
            rim[~has_rim] = 1.0
            idx_rim = torch.multinomial(rim, k, replacement=True, generator=generator)
            use_rim = (rand(b, k) < self.pleural_prob) & has_rim[:, None]
            idx = torch.where(use_rim, idx_rim, idx)
        centre = torch.stack((idx // (h * w), (idx // w) % h, idx % w), dim=-1).float()
        lo, hi = self.radius_mm
        radius = torch.exp(math.log(lo) + rand(b, k, 1) * (math.log(hi) - math.log(lo)))
        stretch = torch.exp((rand(b, k, 3) - 0.5) * 0.6)  # axis ratios within ~[0.74, 1.35]
        spacing = torch.tensor(self.spacing, device=rdev)
        radius_vox = (radius * stretch / spacing).clamp_min(0.5)
        active = (torch.arange(k, device=rdev) < count[:, None]) & has_lung[:, None]
        strength = self.strength[0] + rand(b, k) * (self.strength[1] - self.strength[0])
        strength = strength * active
        is_cons = rand(b, k) < self.consolidation_prob
        ggo = self.ggo[0] + rand(b, k) * (self.ggo[1] - self.ggo[0])
        cons = self.consolidation[0] + rand(b, k) * (self.consolidation[1] - self.consolidation[0])
        target_level = torch.where(is_cons, cons, ggo)
        shape_noise = self._smooth_noise(b, (d, h, w), self.noise_mm, generator, rdev)
        fine_noise = self._smooth_noise(b, (d, h, w), self.noise_mm / 3.0, generator, rdev)

        dev = x.device
        centre, radius_vox = centre.to(dev), radius_vox.to(dev)
        strength, target_level = strength.to(dev), target_level.to(dev)
        shape_noise, fine_noise = shape_noise.to(dev), fine_noise.to(dev)

        # Normalised ellipsoidal distance of every voxel to every blob centre: (B, K, D, H, W).
        axes = [torch.arange(n, device=dev, dtype=torch.float32) for n in (d, h, w)]
        dist2 = torch.zeros((), device=dev)
        for a, coord in enumerate(axes):
            view = [1, 1, 1]
            view[a] = -1
            rel = (coord.view(1, 1, *view) - centre[..., a, None, None, None]) / radius_vox[
                ..., a, None, None, None
            ]
            dist2 = dist2 + rel.square()
        dist = dist2.sqrt() * torch.exp(self.irregularity * shape_noise)  # noise: (B, 1, D, H, W)
        soft = torch.sigmoid((1.0 - dist) / self.edge)
        blob_w = soft * strength[..., None, None, None]
        weight, _ = blob_w.max(dim=1, keepdim=True)
        level = (soft * target_level[..., None, None, None]).sum(1, keepdim=True) / soft.sum(
            1, keepdim=True
        ).clamp_min(1e-6)
        weight = torch.where(lung & (weight >= 0.01), weight, torch.zeros_like(weight))
        target = (level + self.texture * fine_noise).clamp(0.0, 1.0)
        weight = weight.to(x.dtype)
        corrupted = (x * (1.0 - weight) + target.to(x.dtype) * weight).clamp(0.0, 1.0)
        return corrupted, weight

    def lung_rim(self, lung: torch.Tensor) -> torch.Tensor:
        """Lung voxels within ``pleural_mm`` of non-lung voxels of the same patch (bool).

        A max-pool of the non-lung mask dilates it by the rim depth per axis (from the
        spacing); its padding never wins the max, so the patch faces are not a border.
        """
        kernel = tuple(2 * max(1, round(self.pleural_mm / s)) + 1 for s in self.spacing)
        outside = (~lung).to(torch.float32)
        near = F.max_pool3d(outside, kernel, stride=1, padding=tuple(k // 2 for k in kernel))
        return lung & (near > 0)

    def _smooth_noise(
        self,
        batch: int,
        size: tuple[int, int, int],
        cell_mm: float,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        """Smooth zero-mean, roughly unit-std random field ``(B, 1, D, H, W)``."""
        grid = [
            max(2, math.ceil(n * s / cell_mm) + 1) for n, s in zip(size, self.spacing, strict=True)
        ]
        coarse = torch.randn(batch, 1, *grid, generator=generator, device=device)
        field = F.interpolate(coarse, size=size, mode="trilinear", align_corners=True)
        return field / field.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
