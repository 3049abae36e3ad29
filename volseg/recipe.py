"""The preprocessing recipe: one serialisable spec from the cache to the bundle to the predictor.

A :class:`Recipe` (nnU-Net's "plans"; TorchIO's recorded transform arguments) holds every
setting that decides what the network sees: orientation (RAS), working spacing, HU window,
body crop (threshold in HU, margin in mm), the patch / sliding-window size and a version.
It is derived once from the config (:meth:`Recipe.from_config`), builds the preprocessing
cache (:mod:`volseg.data.cache`), is stored whole in the model bundle and is applied by the
one predictor (:mod:`volseg.inference.predictor`), so a scan lands on the same working grid
in training and in inference.

Applying it (:meth:`Recipe.apply`): reorient + resample with
:class:`volseg.geometry.WorkingGrid` (exactly invertible), with ``lung_density_hu`` set remap
the lung density (:func:`volseg.geometry.align_lung_density`, inside the scan's lung mask),
crop to the bounding box of the voxels above ``body_hu`` plus ``body_margin_mm``, window HU
to [0, 1]. The returned
:class:`Working` maps masks onto that grid and probabilities back to the native one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from volseg.errors import InputError

RECIPE_VERSION = 2
"""Bump when applying a recipe changes (it is part of the cache key). 1 was the MONAI
``Spacingd`` chain with a 4-voxel crop margin, which the predictor did not share."""
ORIENTATION = "RAS"
BODY_HU = -500.0
"""Voxels above this HU are body (air and lungs are below) for the crop."""
BODY_MARGIN_MM = 10.0
"""Kept around the body bounding box (mm, rounded up to whole voxels per axis)."""
ALIGNED_VERSION = 3
"""The version a recipe that aligns lung density writes, so that a volseg from before that
setting refuses its bundle (version mismatch) instead of predicting unaligned scans."""
OPTIONAL_FIELDS = ("lung_density_hu",)
"""Fields added after version 2: absent (older bundles and caches) means off, and off
leaves the cache key as it was."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the network's input grid and values (see the module doc)."""

    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    patch_size: tuple[int, int, int]
    orientation: str = ORIENTATION
    body_hu: float = BODY_HU
    body_margin_mm: float = BODY_MARGIN_MM
    version: int = RECIPE_VERSION
    lung_density_hu: float | None = None
    """``data.lung_density_hu``: each scan's lung HU remapped so that its lungs' 5th
    percentile sits here (:func:`volseg.geometry.align_lung_density`); None: HU as scanned."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "hu_window", tuple(float(h) for h in self.hu_window))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"recipe spacing must be 3 positive values, got {self.spacing}")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"recipe hu_window must be (low, high), got {self.hu_window}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"recipe patch_size must be 3 sizes >= 1, got {self.patch_size}")
        if self.lung_density_hu is not None:
            object.__setattr__(self, "lung_density_hu", float(self.lung_density_hu))
        if self.orientation != ORIENTATION:
            raise ValueError(f"recipe orientation must be {ORIENTATION}, got {self.orientation}")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg: Any) -> Recipe:
        """The recipe of a :class:`volseg.config.Config` (data + model sections)."""
        return cls(
            spacing=tuple(cfg.data.spacing),
            hu_window=tuple(cfg.data.hu_window),
            patch_size=tuple(cfg.model.patch_size),
            lung_density_hu=cfg.data.lung_density_hu,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (lists, floats), loadable with ``torch.load(weights_only=True)``."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if self.lung_density_hu is not None:
            out["version"] = ALIGNED_VERSION
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str = "recipe") -> Recipe:
        """Rebuild a recipe; a missing key or another version is an :class:`InputError`."""
        if not isinstance(obj, Mapping):
            raise InputError(f"{source}: no preprocessing recipe")
        version = obj.get("version")
        if version == ALIGNED_VERSION and obj.get("lung_density_hu") is not None:
            obj, version = {**obj, "version": RECIPE_VERSION}, RECIPE_VERSION
        if version != RECIPE_VERSION:
            raise InputError(
                f"{source}: preprocessing recipe version {version} (this volseg applies "
                f"version {RECIPE_VERSION}); re-create it by re-running the finetune stage "
                "(`volseg run -c CFG --from finetune`)"
            )
        try:
            fields = {k: obj[k] for k in cls.__dataclass_fields__ if k not in OPTIONAL_FIELDS}
            fields.update({k: obj.get(k) for k in OPTIONAL_FIELDS})
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: incomplete preprocessing recipe ({exc})") from None

    def cache_key(self) -> str:
        """Short hash of what the cached arrays depend on (not the patch size)."""
        payload = {
            k: v
            for k, v in self.to_json().items()
            if k != "patch_size" and not (k in OPTIONAL_FIELDS and v is None)
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ applying

    def plan(self, native_affine: np.ndarray, native_shape: Sequence[int]) -> Any:
        """The :class:`volseg.geometry.WorkingGrid` of a native volume."""
        from volseg.geometry import WorkingGrid

        return WorkingGrid.plan(native_affine, tuple(native_shape)[:3], self.spacing)

    def apply(
        self,
        image: Any,
        affine: np.ndarray,
        device: Any = "cpu",
        lungs: np.ndarray | None = None,
    ) -> tuple[Working, Any]:
        """Native HU volume ``(X, Y, Z)`` -> (:class:`Working`, network input ``(1, 1, ...)``).

        The input is float32 in [0, 1] on ``device``, on the cropped working grid.
        ``lungs`` (native grid) is needed when the recipe aligns lung density; without it
        the scan goes in as scanned (``Working.lung_shift_hu`` None says so).
        """
        import torch

        from volseg.geometry import align_lung_density, body_bbox, window_hu

        native = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        native = native.to(device)[None, None]
        grid = self.plan(affine, native.shape[-3:])
        hu = grid.to_working(native)
        shift = None
        if self.lung_density_hu is not None and lungs is not None:
            if tuple(np.shape(lungs)[:3]) != tuple(native.shape[-3:]):
                raise ValueError(
                    f"lung mask shape {np.shape(lungs)[:3]} differs from the scan's "
                    f"{tuple(native.shape[-3:])}"
                )
            mask = torch.as_tensor(np.asarray(lungs) > 0).to(device)[None, None]
            mask = grid.to_working(mask.to(torch.float32), mode="nearest") > 0.5
            hu, shift = align_lung_density(hu, mask, self.lung_density_hu)
        margin = tuple(int(math.ceil(self.body_margin_mm / s - 1e-6)) for s in grid.spacing)
        box = body_bbox(hu, self.body_hu, margin)
        working = Working(grid, box, shift)
        return working, window_hu(hu[(..., *box)], self.hu_window)


@dataclass(frozen=True)
class Working:
    """One native volume on a recipe's working grid: the grid and the body crop in it."""

    grid: Any  # volseg.geometry.WorkingGrid
    box: tuple[slice, slice, slice]
    lung_shift_hu: float | None = None
    """How far the lung-density alignment moved the lungs' anchor (HU); None: not aligned."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the cropped working grid."""
        return tuple(b.stop - b.start for b in self.box)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> world affine of the cropped working grid."""
        shift = np.eye(4)
        shift[:3, 3] = [b.start for b in self.box]
        return self.grid.affine @ shift

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    def box_json(self) -> list[list[int]]:
        return [[b.start, b.stop] for b in self.box]

    @classmethod
    def of(
        cls,
        recipe: Recipe,
        native_affine: np.ndarray,
        native_shape: Sequence[int],
        box: Sequence[Sequence[int]],
    ) -> Working:
        """Rebuild from a recorded crop (a cache entry's ``box``)."""
        return cls(
            recipe.plan(native_affine, native_shape), tuple(slice(int(a), int(b)) for a, b in box)
        )  # type: ignore[arg-type]

    def mask_to_working(self, mask: Any) -> np.ndarray:
        """A native-grid mask -> uint8 on the cropped working grid (nearest neighbour)."""
        import torch

        t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
        out = self.grid.to_working(t, mode="nearest")[(0, 0, *self.box)]
        return (out > 0.5).to(torch.uint8).cpu().numpy()

    def to_native(self, cropped: Any, mode: str = "trilinear") -> Any:
        """``(B, C, *self.shape)`` tensor on the cropped grid -> ``(B, C, X, Y, Z)`` native;
        outside the crop the working grid is zero."""
        import torch

        full = torch.zeros(
            (*cropped.shape[:2], *self.grid.shape), dtype=cropped.dtype, device=cropped.device
        )
        full[(..., *self.box)] = cropped
        return self.grid.to_native(full, mode)
