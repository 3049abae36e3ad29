"""Step-indexed patch datasets on preprocessed volumes (see ``volseg.engine.step_data``).

Sample ``i`` is a pure function of ``(seed, i)``: the volume, the crop centre and every
augmentation draw come from the generator :class:`StepDataset` seeds for that index, and
MONAI random transforms get ``set_random_state`` from it. Crops read only the patch from the
memory-mapped cache; volumes smaller than the patch are zero-padded.

* :class:`SegPatchDataset` — image/label/lungs/weight patches, ``pos_fraction`` of them
  centred on a lesion voxel and the rest inside the lungs.
* :class:`UnlabeledPatchDataset` — image crops inside the lungs (GAN, Barlow Twins), with
  optional independently augmented views.

Spatial axes are the cached array's (RAS x, y, z); tensors are ``(C, D, H, W)`` = ``(1, X, Y, Z)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from volseg.data.cache import CachedVolume
from volseg.data.transforms import DEFAULT_AUGMENT, AugmentRecipe, augment_transforms
from volseg.engine.step_data import StepDataset

INDEX_CAP = 20000
"""At most this many candidate centre voxels are kept per volume and class."""


@dataclasses.dataclass
class PatchSource:
    """One training volume on the preprocessed grid.

    Arrays are ``(X, Y, Z)``; any left ``None`` are read (memory-mapped) from ``volume``.
    ``weight``: a scalar (1 for a true mask, e.g. 0.5 for a pseudo-mask) or a voxel map.
    """

    id: str
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    lungs: np.ndarray | None = None
    weight: float | np.ndarray = 1.0
    volume: CachedVolume | None = None

    @classmethod
    def from_cached(
        cls,
        vol: CachedVolume,
        label: np.ndarray | None = None,
        weight: float | np.ndarray = 1.0,
    ) -> PatchSource:
        """A source backed by a cache entry; ``label`` overrides the cached one (pseudo-masks)."""
        return cls(id=vol.id, label=label, weight=weight, volume=vol)

    def get(self, key: str) -> np.ndarray | None:
        value = getattr(self, key)
        if value is None and self.volume is not None:
            value = getattr(self.volume, key)()
        return value

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.volume is not None:
            return tuple(self.volume.shape)  # type: ignore[return-value]
        assert self.image is not None
        return tuple(self.image.shape)  # type: ignore[return-value]


def _as_source(item: CachedVolume | PatchSource) -> PatchSource:
    if isinstance(item, PatchSource):
        if item.image is None and item.volume is None:
            raise ValueError(f"{item.id}: a PatchSource needs an image or a cached volume")
        return item
    if isinstance(item, CachedVolume):
        return PatchSource.from_cached(item)
    raise TypeError(f"expected CachedVolume or PatchSource, got {type(item).__name__}")


def _check_patch_size(patch_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(int(p) for p in patch_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch_size must be three positive ints, got {patch_size}")
    return size  # type: ignore[return-value]


def _candidates(mask: np.ndarray | None) -> np.ndarray:
    """Flat indices of the mask's voxels, evenly thinned to at most ``INDEX_CAP``."""
    if mask is None:
        return np.zeros(0, dtype=np.int64)
    flat = np.flatnonzero(np.asarray(mask).reshape(-1))
    if flat.size > INDEX_CAP:
        flat = flat[np.linspace(0, flat.size - 1, INDEX_CAP).astype(np.int64)]
    return flat


def crop_start(center: Sequence[int], shape: Sequence[int], size: Sequence[int]) -> list[int]:
    """Corner of a ``size`` window around ``center``, kept inside the volume when it fits.

    When the volume is smaller than the window along an axis the start is negative (the
    window overhangs and is padded).
    """
    starts = []
    for c, n, p in zip(center, shape, size, strict=True):
        lo, hi = min(0, n - p), max(0, n - p)
        starts.append(int(np.clip(int(c) - p // 2, lo, hi)))
    return starts


def crop_padded(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0
) -> np.ndarray:
    """``array[start:start+size]`` with the part outside the array filled with ``fill``."""
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, p, n in zip(start, size, array.shape, strict=True):
        a, b = max(s, 0), min(s + p, n)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class _PatchBase(StepDataset):
    """Volume choice, centre choice and cropping shared by both datasets."""

    def __init__(
        self, volumes: Sequence[CachedVolume | PatchSource], patch_size: Sequence[int], seed: int
    ) -> None:
        super().__init__(seed)
        self.sources = [_as_source(v) for v in volumes]
        if not self.sources:
            raise ValueError("no volumes given")
        self.patch_size = _check_patch_size(patch_size)
        self._index: dict[tuple[int, str], np.ndarray] = {}

    def candidates(self, which: int, key: str) -> np.ndarray:
        """Memoised candidate centres (flat indices) of one source's ``label`` or ``lungs``."""
        if (which, key) not in self._index:
            self._index[(which, key)] = _candidates(self.sources[which].get(key))
        return self._index[(which, key)]

    def pick_center(
        self, which: int, rng: np.random.Generator, keys: Sequence[str]
    ) -> tuple[int, int, int]:
        """A voxel from the first of ``keys`` with any voxels, else anywhere."""
        shape = self.sources[which].shape
        for key in keys:
            cand = self.candidates(which, key)
            if cand.size:
                flat = int(cand[rng.integers(cand.size)])
                return tuple(int(v) for v in np.unravel_index(flat, shape))  # type: ignore[return-value]
        return tuple(int(rng.integers(n)) for n in shape)  # type: ignore[return-value]

    def crop(self, source: PatchSource, center: Sequence[int], key: str) -> np.ndarray | None:
        array = source.get(key)
        if array is None:
            return None
        start = crop_start(center, source.shape, self.patch_size)
        return crop_padded(np.asarray(array), start, self.patch_size)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """Drop MONAI metadata so default collation yields plain tensors."""
    from monai.utils import convert_to_tensor

    return {k: convert_to_tensor(v, track_meta=False) for k, v in data.items()}


def cut_field_of_view(
    data: dict[str, Any], keep_slice: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Blank a crop outside a random run of whole slices that holds ``keep_slice``, in place.

    A scan with a short field of view along the body (the lung bases of an abdominal CT,
    a few slices of a thick-slice scan) is shorter than the sliding window, which pads it
    with zeros (the HU window's lower end, as air) above and below; a network that never
    saw such a crop in training reacts to the padding (docs/synth.md: the lung bases of a
    whole-chest CT, cut to their own 90 mm, were called 9.6 % -> 42.8 % lesion). The run
    keeps from a quarter of the crop's slices to all but one, placed at random around
    ``keep_slice`` (the crop's centre voxel, so a lesion crop keeps its lesion); outside
    it the image, label, lungs (and a weight map) become 0, so the loss, which counts
    lung and lesion voxels only, ignores the blank. Returns the kept ``[first, stop)``.
    """
    depth = int(data["image"].shape[-1])
    length = int(rng.integers(max(1, depth // 4), max(depth - 1, 1) + 1))
    lowest = max(0, keep_slice - length + 1)
    highest = min(keep_slice, depth - length)
    first = int(rng.integers(lowest, highest + 1))
    stop = first + length
    for key in ("image", "label", "lungs", "weight"):
        value = data.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            value[..., :first] = 0
            value[..., stop:] = 0
    return first, stop


class SegPatchDataset(_PatchBase):
    """Supervised patches: ``image``, ``label``, ``lungs`` ``(1, X, Y, Z)`` float32, ``weight``.

    ``weight`` is a 0-d tensor, or a ``(1, X, Y, Z)`` map when any source has a voxel map.
    ``pos_fraction`` of the crops are centred on a lesion voxel (when the volume has one),
    the rest on a lung voxel (anywhere without lungs). ``augment`` applies
    :func:`volseg.data.transforms.augment_transforms` with ``augment_recipe``, seeded per
    index; with ``augment_on="device"`` it only draws that augmentation's parameters
    (:func:`volseg.data.batch_augment.draw_params`, from the same per-index seed) under
    the ``augment`` key, for :func:`~volseg.data.batch_augment.augment_batch` to apply to the
    batch on the training device. Each crop's volume
    is drawn uniformly, or with ``source_probs`` (one probability per source, summing to 1).
    ``source_phases`` changes those probabilities during training: ``(first_index, probs)``
    pairs, in increasing order of sample index; from ``first_index`` on, crops are drawn
    with ``probs`` (None: uniform). Being a function of the index, a phase change resumes
    exactly like everything else. ``fov_cut_prob``: the share of crops cut along the slice
    axis as a scan with a short field of view is (:func:`cut_field_of_view`).
    """

    def __init__(
        self,
        volumes: Sequence[CachedVolume | PatchSource],
        patch_size: Sequence[int],
        seed: int = 0,
        pos_fraction: float = 0.67,
        augment: bool = True,
        augment_recipe: AugmentRecipe = DEFAULT_AUGMENT,
        augment_on: Literal["worker", "device"] = "worker",
        source_probs: Sequence[float] | None = None,
        source_phases: Sequence[tuple[int, Sequence[float] | None]] = (),
        fov_cut_prob: float = 0.0,
    ) -> None:
        super().__init__(volumes, patch_size, seed)
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
        if not 0.0 <= fov_cut_prob <= 1.0:
            raise ValueError(f"fov_cut_prob must be in [0, 1], got {fov_cut_prob}")
        self.fov_cut_prob = float(fov_cut_prob)
        self.phases: list[tuple[int, np.ndarray | None]] = [(0, self._checked(source_probs))]
        for first, probs in source_phases:
            if first <= self.phases[-1][0]:
                raise ValueError(f"source_phases must start after index {self.phases[-1][0]}")
            self.phases.append((int(first), self._checked(probs)))
        for s in self.sources:
            if s.get("label") is None:
                raise ValueError(f"{s.id}: no label for a supervised patch dataset")
        self.pos_fraction = float(pos_fraction)
        self.voxel_weight = any(isinstance(s.weight, np.ndarray) for s in self.sources)
        if augment_on not in ("worker", "device"):
            raise ValueError(f"augment_on must be 'worker' or 'device', got {augment_on!r}")
        self.recipe = augment_recipe
        self.draw_params = augment and augment_on == "device"
        self.augment = None
        if augment and augment_on == "worker":
            extra = ("weight",) if self.voxel_weight else ()
            self.augment = augment_transforms(
                ("image", "label", "lungs"), augment_recipe, extra_nearest=extra
            )

    def _checked(self, source_probs: Sequence[float] | None) -> np.ndarray | None:
        if source_probs is None:
            return None
        probs = np.asarray(source_probs, dtype=np.float64)
        if probs.shape != (len(self.sources),) or (probs < 0).any():
            raise ValueError(
                f"source_probs needs {len(self.sources)} non-negative values, got {probs}"
            )
        if not np.isclose(probs.sum(), 1.0):
            raise ValueError(f"source_probs must sum to 1, got {probs.sum()}")
        return probs / probs.sum()

    def source_probs_at(self, index: int) -> np.ndarray | None:
        """Per-source probabilities for sample ``index`` (None: uniform)."""
        probs = self.phases[0][1]
        for first, phase_probs in self.phases[1:]:
            if index < first:
                break
            probs = phase_probs
        return probs

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        probs = self.source_probs_at(index)
        if probs is None:
            which = int(rng.integers(len(self.sources)))
        else:
            which = int(rng.choice(len(self.sources), p=probs))
        src = self.sources[which]
        positive = rng.random() < self.pos_fraction
        keys = ("label", "lungs") if positive else ("lungs",)
        center = self.pick_center(which, rng, keys)
        image = self.crop(src, center, "image")
        label = self.crop(src, center, "label")
        lungs = self.crop(src, center, "lungs")
        assert image is not None and label is not None
        data: dict[str, Any] = {
            "image": _tensor(image),
            "label": _tensor(label > 0),
            "lungs": _tensor(lungs > 0) if lungs is not None else torch.zeros_like(_tensor(image)),
        }
        if self.voxel_weight:
            weight = src.weight
            if isinstance(weight, np.ndarray):
                data["weight"] = _tensor(self.crop_weight(src, center))
            else:
                data["weight"] = torch.full_like(data["label"], float(weight))
        if self.fov_cut_prob > 0 and rng.random() < self.fov_cut_prob:  # no draw when off
            start = crop_start(center, src.shape, self.patch_size)
            cut_field_of_view(data, center[2] - start[2], rng)
        augment_seed = int(rng.integers(2**31))
        if self.augment is not None:
            self.augment.set_random_state(seed=augment_seed)
            data = _plain(self.augment(data))
        if self.draw_params:
            from volseg.data.batch_augment import PARAMS_KEY, draw_params

            data[PARAMS_KEY] = draw_params(np.random.default_rng(augment_seed), self.recipe)
        if not self.voxel_weight:
            data["weight"] = torch.tensor(float(src.weight), dtype=torch.float32)
        return data

    def crop_weight(self, source: PatchSource, center: Sequence[int]) -> np.ndarray:
        start = crop_start(center, source.shape, self.patch_size)
        return crop_padded(np.asarray(source.weight, dtype=np.float32), start, self.patch_size)


class UnlabeledPatchDataset(_PatchBase):
    """Image crops centred inside the lungs (``lung_fraction`` of them; the rest anywhere).

    Returns ``image`` ``(1, X, Y, Z)`` float32 (augmented when ``augment``) and ``lungs``;
    with ``views`` > 0 also ``views`` ``(V, 1, X, Y, Z)``: independently augmented copies of
    the same crop (two for Barlow Twins). No label is ever read.
    """

    def __init__(
        self,
        volumes: Sequence[CachedVolume | PatchSource],
        patch_size: Sequence[int],
        seed: int = 0,
        lung_fraction: float = 1.0,
        augment: bool = False,
        views: int = 0,
        augment_recipe: AugmentRecipe = DEFAULT_AUGMENT,
    ) -> None:
        super().__init__(volumes, patch_size, seed)
        if not 0.0 <= lung_fraction <= 1.0:
            raise ValueError(f"lung_fraction must be in [0, 1], got {lung_fraction}")
        if views < 0:
            raise ValueError(f"views must be >= 0, got {views}")
        self.lung_fraction = float(lung_fraction)
        self.views = int(views)
        self.transform = None
        if augment or views:
            self.transform = augment_transforms(("image",), augment_recipe)
        self.augment = augment

    def _augmented(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        assert self.transform is not None
        self.transform.set_random_state(seed=int(rng.integers(2**31)))
        return _plain(self.transform({"image": image.clone()}))["image"]

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        which = int(rng.integers(len(self.sources)))
        src = self.sources[which]
        keys = ("lungs",) if rng.random() < self.lung_fraction else ()
        center = self.pick_center(which, rng, keys)
        image = self.crop(src, center, "image")
        lungs = self.crop(src, center, "lungs")
        assert image is not None
        crop = _tensor(image)
        data: dict[str, torch.Tensor] = {
            "lungs": _tensor(lungs > 0) if lungs is not None else torch.zeros_like(crop),
        }
        data["image"] = self._augmented(crop, rng) if self.augment else crop
        if self.views:
            data["views"] = torch.stack([self._augmented(crop, rng) for _ in range(self.views)])
        return data
