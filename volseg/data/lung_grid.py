"""The coarse physical grid the lung masking works on, and the exact way back to native voxels.

Lung masking decides on a grid of about 2 mm whatever the scan's resolution: a 0.5 mm
scan and an 8 mm scan then see the same anatomy in the same units, and a 512 x 512 x 133
scan shrinks to about 180 x 180 x 133 voxels. Native voxels are averaged in whole blocks
(the partial-volume value a coarser scanner would measure), and the final mask comes back
by trilinear interpolation of a soft boundary, so its edge sits between coarse voxels where
the native HU crosses the air threshold.

Native arrays are never reoriented or copied beyond one float32 conversion: the grid pools
along the native axes, and only the small coarse arrays are permuted to the anatomical order
``(z, y, x)`` = (inferior -> superior, anterior -> posterior, right -> left) that the
anatomy steps assume.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Anatomical order of the coarse arrays: for each output axis, the RAS axis it runs along
# and the direction it runs in (+1 towards R/A/S, -1 towards L/P/I).
_ANATOMICAL = ((2, +1), (1, -1), (0, -1))


@dataclass(frozen=True)
class AxisOrder:
    """Permutation and flips from native array axes to the anatomical ``(z, y, x)`` order."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> AxisOrder:
        import nibabel.orientations as nio

        ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
        perm, flip = [], []
        for ras_axis, direction in _ANATOMICAL:
            native = int(np.nonzero(ornt[:, 0] == ras_axis)[0][0])
            perm.append(native)
            flip.append(int(ornt[native, 1]) != direction)
        return cls(tuple(perm), tuple(flip))  # type: ignore[arg-type]

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """Native-order array -> anatomical order (a view)."""
        out = volume.transpose(self.perm)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]

    def backward(self, volume: np.ndarray) -> np.ndarray:
        """Anatomical-order array -> native order (a view)."""
        volume = volume[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]
        return volume.transpose(np.argsort(self.perm))

    def spacing(self, native_spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        return tuple(float(native_spacing[a]) for a in self.perm)  # type: ignore[return-value]


@dataclass(frozen=True)
class CoarseGrid:
    """Whole-block averaging of native voxels to about ``target_mm``, in native axis order.

    ``factors[a]`` native voxels along axis ``a`` make one coarse voxel (1 where the scan is
    already coarser); the last block of an axis may be partial and averages what it holds.
    """

    native_shape: tuple[int, int, int]
    factors: tuple[int, int, int]
    native_spacing: tuple[float, float, float]

    @classmethod
    def plan(
        cls, native_shape: tuple[int, ...], native_spacing: tuple[float, ...], target_mm: float
    ) -> CoarseGrid:
        factors = tuple(max(1, int(round(target_mm / float(s)))) for s in native_spacing)
        return cls(
            tuple(int(n) for n in native_shape),  # type: ignore[arg-type]
            factors,  # type: ignore[arg-type]
            tuple(float(s) for s in native_spacing),  # type: ignore[arg-type]
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(-(-n // f) for n, f in zip(self.native_shape, self.factors, strict=True))  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(s * f for s, f in zip(self.native_spacing, self.factors, strict=True))  # type: ignore[return-value]

    def pool(self, volume: np.ndarray, floor: float | None = None) -> np.ndarray:
        """Block means (float32) of a native volume, values below ``floor`` raised to it first
        (scan-circle padding such as -2048 or -3024 HU then counts as air, not as a deeper
        black that would drag the partial-volume averages at the body edge down)."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        # Pool in memory order (nibabel arrays are often Fortran-ordered): no copy, 2x faster.
        order = tuple(int(a) for a in np.argsort(volume.strides)[::-1])
        view = volume.transpose(order)
        if not view.flags.c_contiguous:
            view = np.ascontiguousarray(view)
        with warnings.catch_warnings():  # read-only input (a SimpleITK view): never written
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(view).to(torch.float32, copy=True)
        if floor is not None:
            x.clamp_(min=float(floor))
        if self.factors != (1, 1, 1):
            factors = tuple(self.factors[a] for a in order)
            x = F.avg_pool3d(x[None, None], factors, ceil_mode=True)[0, 0]
        return np.ascontiguousarray(x.numpy().transpose(np.argsort(order)))

    def upsample_soft(self, soft: np.ndarray, level: float = 0.5) -> np.ndarray:
        """Native boolean mask where the trilinear interpolation of coarse ``soft`` exceeds
        ``level``; coarse voxel centres sit at native index ``i * f + (f - 1) / 2``.

        Only the bounding box of the coarse voxels at or above ``level`` (plus one voxel)
        is interpolated, so the cost follows the lungs, not the field of view.
        """
        import torch
        import torch.nn.functional as F  # noqa: N812

        out = np.zeros(self.native_shape, dtype=bool)
        on = np.nonzero(soft >= level)
        if on[0].size == 0:
            return out
        lo = [max(int(a.min()) - 1, 0) for a in on]
        hi = [min(int(a.max()) + 2, n) for a, n in zip(on, soft.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        x = torch.from_numpy(np.ascontiguousarray(soft[box], dtype=np.float32))[None, None]
        if self.factors != (1, 1, 1):
            x = F.interpolate(x, scale_factor=self.factors, mode="trilinear", align_corners=False)
        # The interpolation treats the box edge as the volume edge; a one-voxel margin of
        # coarse voxels below ``level`` keeps that from mattering where the mask is.
        fine = x[0, 0].numpy() > level
        native = tuple(
            slice(a * f, min(b * f, n))
            for a, b, f, n in zip(lo, hi, self.factors, self.native_shape, strict=True)
        )
        out[native] = fine[tuple(slice(0, s.stop - s.start) for s in native)]
        return out

    def upsample_nearest(self, labels: np.ndarray) -> np.ndarray:
        """Native array where each voxel takes its coarse block's value."""
        out = labels
        for axis, f in enumerate(self.factors):
            if f > 1:
                out = np.repeat(out, f, axis=axis)
        return out[tuple(slice(0, n) for n in self.native_shape)]
