"""The working grid: native voxels -> RAS axes at the model's spacing, and back, exactly.

A scan is mapped to the grid the network works on in two exact steps and one resampling:

1. reorder/flip array axes so they run along R, A, S (``nibabel.orientations``: a pure
   permutation, no interpolation, so oblique affines stay oblique and nothing is lost);
2. resample each axis to ``round(n * spacing / target)`` voxels with trilinear interpolation
   and ``align_corners=False``, which keeps the field of view identical, so the inverse
   resampling lands on the native voxel centres exactly.

The inverse (:meth:`WorkingGrid.to_native`) is the same two steps backwards, which is why a
lesion painted at native voxel (i, j, k) comes back at (i, j, k). Everything runs in torch
on whatever device the tensors live on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812


@dataclass(frozen=True)
class WorkingGrid:
    """How one native volume maps to the network's grid.

    ``ornt``: nibabel orientation array (native axis -> RAS axis, flip); ``native_shape``:
    shape of the input array; ``ras_shape``: shape after reorientation; ``shape``: shape at
    the working spacing; ``affine``: voxel->world affine of the working grid.
    """

    ornt: np.ndarray
    native_shape: tuple[int, int, int]
    ras_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def plan(
        cls,
        native_affine: np.ndarray,
        native_shape: Sequence[int],
        target_spacing: Sequence[float],
    ) -> WorkingGrid:
        """Plan the mapping for a volume of ``native_shape`` with ``native_affine``."""
        import nibabel.orientations as nio

        native_affine = np.asarray(native_affine, dtype=np.float64)
        native_shape = tuple(int(s) for s in native_shape)
        ornt = nio.io_orientation(native_affine)  # to RAS
        ras_affine = native_affine @ nio.inv_ornt_aff(ornt, native_shape)
        ras_shape = tuple(int(native_shape[int(axis)]) for axis in np.argsort(ornt[:, 0]))
        ras_spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
        target = np.asarray(target_spacing, dtype=np.float64)
        shape = tuple(
            max(1, int(round(n * s / t)))
            for n, s, t in zip(ras_shape, ras_spacing, target, strict=True)
        )
        # Voxel centres under align_corners=False: new index j sits at old index
        # (j + 0.5) * n_old / n_new - 0.5.
        scale = np.array(ras_shape, dtype=np.float64) / np.array(shape, dtype=np.float64)
        to_ras_index = np.eye(4)
        to_ras_index[:3, :3] = np.diag(scale)
        to_ras_index[:3, 3] = 0.5 * scale - 0.5
        affine = ras_affine @ to_ras_index
        return cls(ornt, native_shape, ras_shape, shape, affine)  # type: ignore[arg-type]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Effective working spacing (mm), within half a voxel's rounding of the target."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    # ------------------------------------------------------------------ forward / inverse

    def _native_to_ras(self, volume: torch.Tensor) -> torch.Tensor:
        """(…, X, Y, Z) native axes -> RAS axes (permutation and flips only)."""
        lead = volume.dim() - 3
        for native_axis, (_, flip) in enumerate(self.ornt):
            if flip < 0:
                volume = volume.flip(lead + native_axis)
        order = np.argsort(self.ornt[:, 0])  # RAS axis k comes from native axis order[k]
        return volume.permute(*range(lead), *(lead + int(a) for a in order))

    def _ras_to_native(self, volume: torch.Tensor) -> torch.Tensor:
        lead = volume.dim() - 3
        ras_of_native = [int(a) for a in self.ornt[:, 0]]  # native axis i is RAS axis ...
        volume = volume.permute(*range(lead), *(lead + a for a in ras_of_native))
        for native_axis, (_, flip) in enumerate(self.ornt):
            if flip < 0:
                volume = volume.flip(lead + native_axis)
        return volume

    def to_working(self, volume: torch.Tensor, mode: str = "trilinear") -> torch.Tensor:
        """Native ``(B, C, X, Y, Z)`` tensor -> working grid ``(B, C, *self.shape)``."""
        ras = self._native_to_ras(volume)
        return _resize(ras, self.shape, mode)

    def to_native(self, volume: torch.Tensor, mode: str = "trilinear") -> torch.Tensor:
        """Working-grid ``(B, C, *self.shape)`` tensor -> native ``(B, C, X, Y, Z)``."""
        ras = _resize(volume, self.ras_shape, mode)
        return self._ras_to_native(ras)


def _resize(volume: torch.Tensor, shape: Sequence[int], mode: str) -> torch.Tensor:
    if tuple(volume.shape[-3:]) == tuple(shape):
        return volume.contiguous()
    if mode == "nearest":
        # nearest-exact matches align_corners=False centre mapping
        return F.interpolate(volume, size=tuple(shape), mode="nearest-exact")
    return F.interpolate(volume, size=tuple(shape), mode=mode, align_corners=False)


def window_hu(volume: torch.Tensor, hu_window: Sequence[float]) -> torch.Tensor:
    """Clip to the HU window and scale it to [0, 1] (what the network was trained on)."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    return ((volume - lo) / (hi - lo)).clamp_(0.0, 1.0)


def body_bbox(
    volume: torch.Tensor, threshold: float, margin: int | Sequence[int]
) -> tuple[slice, slice, slice]:
    """Bounding box (over the last three dims) of voxels above ``threshold``, grown by
    ``margin`` voxels (one per axis, or one for all); the whole volume when none is above."""
    margins = (int(margin),) * 3 if isinstance(margin, int) else tuple(int(m) for m in margin)
    fg = (volume > threshold).reshape(volume.shape[-3:])
    if not bool(fg.any()):
        return tuple(slice(0, n) for n in volume.shape[-3:])  # type: ignore[return-value]
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(fg.any(dim=other)).flatten()
        lo = max(int(hits[0]) - margins[axis], 0)
        hi = min(int(hits[-1]) + 1 + margins[axis], fg.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)  # type: ignore[return-value]


LUNG_DENSITY_PERCENTILE = 5.0
"""The lung HU percentile :func:`align_lung_density` anchors: the healthy parenchyma's low
end, which extensive lesions move little (painted CT-3 copies of real CTs: 26-38 HU above
their CT-1 copies; the 10th percentile 40-58 HU)."""
LUNG_DENSITY_MAX_SHIFT_HU = 200.0
"""The anchor moves at most this far (a scan whose lung mask missed the lungs is not
remapped into nonsense)."""
LUNG_DENSITY_ANCHOR_RANGE_HU = (-960.0, -300.0)
"""The anchor is clamped into this range first: the stretch between air and the anchor,
(target + 1000) / (anchor + 1000), stays below 5 for any target (LIDC-IDRI-0001, anchor
-933 HU: 2.7 to -820)."""


def align_lung_density(
    hu: torch.Tensor, lungs: torch.Tensor, target_hu: float
) -> tuple[torch.Tensor, float | None]:
    """Remap ``hu`` so the lungs' :data:`LUNG_DENSITY_PERCENTILE` lands on ``target_hu``.

    Piecewise linear through (-1000, -1000), (anchor, target) and (0, 0), identity outside
    [-1000, 0]: air (-1000 and below) and soft tissue (0 and above) keep their HU; lung,
    lesions and fat between them are stretched, less the nearer they lie to -1000 or 0.
    Real lungs differ by about 100 HU in density with inspiration depth, dose and kernel
    (5th percentile on a 2.8 x 2.8 x 10 mm grid: LIDC-IDRI-0001 -933 HU, 4D-Lung -841); a
    network trained on one density range reads that difference as disease or its absence
    (docs/synth.md). Returns the remapped volume and the anchor's shift (HU); without lung
    voxels the volume unchanged and None (not aligned).
    """
    values = hu[lungs.to(torch.bool)]
    if values.numel() == 0:
        return hu, None
    k = max(1, int(round(values.numel() * LUNG_DENSITY_PERCENTILE / 100.0)))
    low_end, high_end = LUNG_DENSITY_ANCHOR_RANGE_HU
    anchor = min(max(float(values.float().kthvalue(k).values), low_end), high_end)
    shift = max(-LUNG_DENSITY_MAX_SHIFT_HU, min(LUNG_DENSITY_MAX_SHIFT_HU, target_hu - anchor))
    target = min(max(anchor + shift, low_end), high_end)
    low = -1000.0 + (hu + 1000.0) * ((target + 1000.0) / (anchor + 1000.0))
    high = target + (hu - anchor) * (target / anchor)
    out = torch.where(hu <= anchor, low, high)
    out = torch.where((hu < -1000.0) | (hu > 0.0), hu, out)
    return out, target - anchor
