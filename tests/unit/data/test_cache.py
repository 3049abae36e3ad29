"""Preprocessing cache: hits, misses, invalidation, memory-mapped loading, the recipe's grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.unit.data.test_mosmed import make_mosmed
from volseg.data import cache as cache_mod
from volseg.data.cache import build_cache, load_cache
from volseg.data.mosmed import discover
from volseg.errors import InputError
from volseg.io import read_nifti
from volseg.recipe import Recipe


def DataConfig(spacing=(1.5, 1.5, 5.0)) -> Recipe:  # noqa: N802  (the recipe a data section makes)
    return Recipe(spacing, (-1000.0, 400.0), (32, 32, 16))


@pytest.fixture
def dataset(tmp_path: Path):
    make_mosmed(tmp_path / "data", {"CT-0": 1, "CT-1": 1}, labeled=1, with_lungs=True)
    return discover(tmp_path / "data")


def _spy(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = cache_mod.preprocess_study

    def spy(study, *args):
        calls.append(study.id)
        return real(study, *args)

    monkeypatch.setattr(cache_mod, "preprocess_study", spy)
    return calls


def test_build_then_hit(tmp_path: Path, dataset, monkeypatch) -> None:
    calls = _spy(monkeypatch)
    cfg = DataConfig(spacing=(7.5, 7.5, 10.0))
    vols = build_cache(dataset, cfg, None, tmp_path / "cache")
    assert calls == ["study_0001", "study_0002"]
    healthy, labeled = vols["study_0001"], vols["study_0002"]
    assert not healthy.has_label and labeled.has_label and labeled.has_lungs
    image = labeled.image()
    assert isinstance(image, np.memmap) and image.dtype == np.float16
    assert image.shape == labeled.shape == labeled.label().shape == labeled.lungs().shape
    assert labeled.label().dtype == np.uint8 and labeled.label().sum() > 0
    # the field of view is kept: the spacing is the target within half a voxel of rounding
    np.testing.assert_allclose(labeled.spacing, (7.5, 7.5, 10.0), rtol=0.05)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0

    calls.clear()
    again = build_cache(dataset, cfg, None, tmp_path / "cache")
    assert calls == []
    assert again["study_0002"].shape == labeled.shape
    np.testing.assert_array_equal(again["study_0002"].affine, labeled.affine)
    loaded = load_cache(labeled.folder, ["study_0002"])["study_0002"]
    assert loaded.shape == labeled.shape and loaded.source_shape == labeled.source_shape
    np.testing.assert_array_equal(loaded.source_affine, labeled.source_affine)


def test_invalidation_by_settings_and_source(tmp_path: Path, dataset, monkeypatch) -> None:
    calls = _spy(monkeypatch)
    cache_dir = tmp_path / "cache"
    first = build_cache(dataset, DataConfig(spacing=(7.5, 7.5, 10.0)), None, cache_dir)
    calls.clear()
    other = build_cache(dataset, DataConfig(spacing=(5.0, 5.0, 10.0)), None, cache_dir)
    assert calls == ["study_0001", "study_0002"]
    assert other["study_0001"].folder != first["study_0001"].folder
    assert other["study_0001"].shape != first["study_0001"].shape

    calls.clear()
    src = dataset[1].image
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    build_cache(dataset, DataConfig(spacing=(5.0, 5.0, 10.0)), None, cache_dir)
    assert calls == ["study_0002"]

    calls.clear()
    (other["study_0001"].folder / "study_0001.image.npy").unlink()  # incomplete entry
    build_cache(dataset, DataConfig(spacing=(5.0, 5.0, 10.0)), None, cache_dir)
    assert calls == ["study_0001"]


def test_lungs_dir_and_errors(tmp_path: Path, dataset) -> None:
    cfg = DataConfig(spacing=(7.5, 7.5, 10.0))
    with pytest.raises(InputError, match="study_0001_lungs"):
        build_cache(dataset, cfg, tmp_path / "nolungs", tmp_path / "cache")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    from dataclasses import replace

    with pytest.raises(InputError, match="bad.nii.gz"):
        build_cache([replace(dataset[0], image=bad)], cfg, None, tmp_path / "cache")
    with pytest.raises(InputError, match="no cache entry"):
        load_cache(tmp_path / "cache", ["study_0042"])


def test_masks_move_between_source_and_cached_grids(tmp_path: Path, dataset) -> None:
    import torch

    recipe = DataConfig(spacing=(5.0, 5.0, 10.0))
    vol = build_cache(dataset, recipe, None, tmp_path / "c")["study_0002"]
    on_grid = vol.mask_from_source(dataset[1].mask, recipe)
    np.testing.assert_array_equal(on_grid, vol.label())  # same as the cached label
    source, affine = read_nifti(dataset[1].mask)
    label = torch.from_numpy(np.asarray(vol.label(), dtype=np.float32))[None, None]
    back = vol.working(recipe).to_native(label, "nearest")[0, 0].numpy()
    assert back.shape == source.shape
    np.testing.assert_array_equal(back > 0.5, source > 0)  # same spacing: exact


@pytest.mark.parametrize("spacing", [(5.0, 5.0, 10.0), (7.5, 6.0, 12.0)])
def test_train_and_inference_see_the_same_working_grid(tmp_path: Path, dataset, spacing) -> None:
    """The cache (training) and the predictor (inference) apply one recipe: same grid, same
    body crop, same values (up to the cache's float16) for the same scan."""
    recipe = DataConfig(spacing=spacing)
    vol = build_cache(dataset, recipe, None, tmp_path / "c")["study_0002"]
    image, affine = read_nifti(dataset[1].image, dtype=np.float32)
    working, x = recipe.apply(image, affine)  # what Predictor.probability runs
    assert working.shape == vol.shape
    np.testing.assert_array_equal(working.affine, vol.affine)
    assert [[b.start, b.stop] for b in working.box] == [list(b) for b in vol.box]
    np.testing.assert_allclose(vol.image(), x[0, 0].numpy(), atol=1e-3)
    assert vol.working(recipe).box == working.box


def test_parallel_build_matches_serial(tmp_path: Path, dataset) -> None:
    cfg = DataConfig(spacing=(7.5, 7.5, 10.0))
    serial = build_cache(dataset, cfg, None, tmp_path / "a")
    parallel = build_cache(dataset, cfg, None, tmp_path / "b", num_workers=2)
    for sid, vol in serial.items():
        np.testing.assert_array_equal(vol.image(), parallel[sid].image())
        np.testing.assert_array_equal(vol.affine, parallel[sid].affine)


def test_mask_on_another_grid_is_an_error(tmp_path: Path, dataset) -> None:
    from dataclasses import replace

    from volseg.io import write_nifti

    mask, affine = read_nifti(dataset[1].mask)
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    bad = write_nifti(tmp_path / "shifted_mask.nii.gz", mask, shifted)
    with pytest.raises(InputError, match="shifted_mask"):
        build_cache([replace(dataset[1], mask=bad)], DataConfig(), None, tmp_path / "c")
