"""The preprocessing recipe: exact geometry both ways, window and body crop, round trips
through the model bundle, old bundles."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volseg.errors import InputError
from volseg.io import read_nifti
from volseg.recipe import Recipe

WINDOW = (-1000.0, 400.0)


def _oblique(spacing=(2.0, 2.0, 3.0)) -> np.ndarray:
    """A LAS-ish affine rotated 20° about z and 10° about x, with an offset."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-spacing[0], spacing[1], spacing[2]])
    affine[:3, 3] = (12.0, -30.0, 7.5)
    return affine


AFFINES = {
    "LAS": np.diag([-2.0, 2.0, 3.0, 1.0]) + np.array([[0, 0, 0, 40.0]] + [[0] * 4] * 3),
    "RAS": np.diag([2.0, 2.0, 3.0, 1.0]),
    "oblique": _oblique(),
}


def _ct(shape=(36, 30, 12), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ct = np.full(shape, -1000, np.int16)
    ct[4:32, 3:27, 1:11] = rng.integers(-900, 200, (28, 24, 10))
    return ct


def _recipe(spacing) -> Recipe:
    return Recipe(spacing, WINDOW, (16, 16, 8))


def _roundtrip(ct: np.ndarray, label: np.ndarray, affine: np.ndarray, spacing):
    """Apply the recipe, then map the working-grid label back to the native grid."""
    recipe = _recipe(spacing)
    working, x = recipe.apply(ct.astype(np.float32), affine)
    on_grid = torch.from_numpy(working.mask_to_working(label).astype(np.float32))[None, None]
    back = working.to_native(on_grid, "nearest")[0, 0].numpy()
    return working, x, back


@pytest.mark.parametrize("name", list(AFFINES))
def test_same_spacing_roundtrip_returns_the_painted_voxel(name: str) -> None:
    affine = AFFINES[name]
    ct = _ct()
    label = np.zeros(ct.shape, np.uint8)
    label[20, 11, 6] = 1
    native = tuple(
        np.linalg.norm(affine[:3, :3], axis=0)[np.argsort(nib.io_orientation(affine)[:, 0])]
    )
    working, _, back = _roundtrip(ct, label, affine, native)
    assert "".join(nib.aff2axcodes(working.affine)) == "RAS"
    assert back.shape == ct.shape
    np.testing.assert_array_equal(np.argwhere(back > 0.5), [[20, 11, 6]])


@pytest.mark.parametrize("name", list(AFFINES))
def test_resampled_roundtrip_keeps_grid_and_block(name: str) -> None:
    affine = AFFINES[name]
    ct = _ct()
    label = np.zeros(ct.shape, np.uint8)
    label[18:23, 10:15, 5:8] = 1
    working, _, back = _roundtrip(ct, label, affine, (1.5, 2.5, 4.0))
    np.testing.assert_allclose(working.spacing, (1.5, 2.5, 4.0), rtol=0.1)
    got = back > 0.5
    assert back.shape == ct.shape and got[20, 12, 6]
    dice = 2 * (got & (label > 0)).sum() / (got.sum() + label.sum())
    assert dice > 0.6


def test_real_ct_roundtrip(real_ct: Path) -> None:
    data, affine = read_nifti(real_ct, dtype=np.float32)
    label = np.zeros(data.shape, np.uint8)
    c = tuple(s // 2 for s in data.shape)
    label[c[0] - 3 : c[0] + 4, c[1] - 3 : c[1] + 4, c[2] - 2 : c[2] + 3] = 1
    _, x, back = _roundtrip(data, label, affine, (1.5, 1.5, 5.0))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert back.shape == data.shape and back[c] > 0.5


def test_image_window_and_body_crop() -> None:
    ct = np.full((40, 30, 10), -1000, np.float32)
    ct[10:30, 8:22, 2:8] = 1000  # body: clipped to 1 by the window
    ct[15:20, 10:15, 4:6] = -1000  # air inside the body is kept (within the bounding box)
    working, x = _recipe((2.0, 2.0, 3.0)).apply(ct, np.diag([2.0, 2.0, 3.0, 1.0]))
    img = x[0, 0].numpy()
    # margin 10 mm: 5 voxels in-plane, 4 along z (clipped to the volume)
    assert img.shape == working.shape == (20 + 10, 14 + 10, 10)
    assert img.max() == pytest.approx(1.0) and img.min() == pytest.approx(0.0)
    assert img.dtype == np.float32


def test_empty_scan_is_not_cropped_to_nothing() -> None:
    ct = np.full((12, 10, 6), -1000.0, np.float32)
    working, _ = _recipe((2.0, 2.0, 3.0)).apply(ct, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert working.shape == (12, 10, 6)


def test_bad_recipes() -> None:
    with pytest.raises(ValueError, match="hu_window"):
        Recipe((1, 1, 1), (400, -1000), (8, 8, 8))
    with pytest.raises(ValueError, match="spacing"):
        Recipe((1, 0, 1), WINDOW, (8, 8, 8))
    with pytest.raises(ValueError, match="patch_size"):
        Recipe((1, 1, 1), WINDOW, (8, 0, 8))


def test_cache_key_changes_with_every_preprocessing_setting() -> None:
    base = _recipe((1.5, 1.5, 5.0))
    assert base.cache_key() != _recipe((1.5, 1.5, 4.0)).cache_key()
    assert base.cache_key() != Recipe((1.5, 1.5, 5.0), (-1000, 300), (16, 16, 8)).cache_key()
    assert (
        base.cache_key()
        != Recipe((1.5, 1.5, 5.0), WINDOW, (16, 16, 8), body_margin_mm=4).cache_key()
    )
    assert (
        base.cache_key() != Recipe((1.5, 1.5, 5.0), WINDOW, (16, 16, 8), body_hu=-400).cache_key()
    )
    # the patch size does not change the cached arrays
    assert base.cache_key() == Recipe((1.5, 1.5, 5.0), WINDOW, (32, 32, 8)).cache_key()


def test_recipe_json_round_trip_and_old_versions() -> None:
    recipe = Recipe((1.5, 1.5, 5.0), WINDOW, (16, 16, 8), body_margin_mm=7.5)
    assert Recipe.from_json(recipe.to_json()) == recipe
    with pytest.raises(InputError, match="version 1.*--from finetune"):
        Recipe.from_json({**recipe.to_json(), "version": 1}, "old")
    with pytest.raises(InputError, match="incomplete"):
        Recipe.from_json({"version": recipe.version, "spacing": [1, 1, 1]})


def test_recipe_round_trips_through_the_bundle(tmp_path: Path) -> None:
    from volseg.bundle import load_bundle, save_bundle
    from volseg.models import build_model

    params = {"in_channels": 1, "out_channels": 1, "filters": [2, 4, 8], "strides": [2, 2]}
    recipe = Recipe((5.0, 5.0, 10.0), WINDOW, (16, 16, 8), body_margin_mm=6.0)
    path = save_bundle(
        tmp_path / "model.pt", build_model("unet3d", **params), "unet3d", params, recipe
    )
    assert load_bundle(path).recipe == recipe
    assert torch.load(path, weights_only=True)["recipe"] == recipe.to_json()


def test_format_1_bundle_loads_with_a_warning(tmp_path: Path, caplog) -> None:
    from volseg.bundle import load_bundle, save_bundle
    from volseg.models import build_model

    params = {"in_channels": 1, "out_channels": 1, "filters": [2, 4, 8], "strides": [2, 2]}
    recipe = Recipe((5.0, 5.0, 10.0), WINDOW, (16, 16, 8))
    path = save_bundle(
        tmp_path / "model.pt", build_model("unet3d", **params), "unet3d", params, recipe
    )
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 1
    payload["preprocessing"] = {"spacing": [5.0, 5.0, 10.0], "hu_window": list(WINDOW)}
    payload["predict"] = {"roi_size": [16, 16, 8]}
    del payload["recipe"]
    torch.save(payload, tmp_path / "old.pt")
    with caplog.at_level("WARNING"):
        old = load_bundle(tmp_path / "old.pt")
    assert old.recipe == recipe
    assert "format 1 bundle" in caplog.text and "--from finetune" in caplog.text
    del payload["predict"]
    torch.save(payload, tmp_path / "older.pt")
    with pytest.raises(InputError, match="--from finetune"):
        load_bundle(tmp_path / "older.pt")


def test_lung_density_alignment_moves_the_lungs_and_keeps_air_and_tissue() -> None:
    """Two scans whose lungs differ by 100 HU reach the network at one lung density; air,
    soft tissue and the lesion's order above the lung stay; the shift is reported."""
    from volseg.geometry import align_lung_density

    lungs = torch.zeros(40, dtype=torch.bool)
    lungs[:30] = True
    for lung_hu, shift in ((-900.0, 80.0), (-800.0, -20.0)):
        hu = torch.full((40,), 30.0)
        hu[:30] = lung_hu
        hu[25:30] = lung_hu + 300.0  # a lesion in the lung
        hu[30:35] = -1000.0  # air
        out, moved = align_lung_density(hu, lungs, -820.0)
        assert moved == pytest.approx(shift)
        assert out[:25].tolist() == pytest.approx([-820.0] * 25)
        assert float(out[25]) > -820.0 + 200.0  # the lesion stays well above its lung
        assert out[30:].tolist() == hu[30:].tolist()  # air and soft tissue as scanned
    # no lung voxels: unchanged, not aligned; a wild anchor moves at most 200 HU
    hu = torch.full((40,), -400.0)
    assert align_lung_density(hu, torch.zeros(40, dtype=torch.bool), -820.0) == (hu, None)
    assert align_lung_density(hu, lungs, -820.0)[1] == pytest.approx(-200.0)


@pytest.mark.parametrize(
    ("lung_hu", "target"), [(-990.0, -820.0), (-933.0, -820.0), (-700.0, -900.0)]
)
def test_lung_density_remap_is_monotone_continuous_and_fixed_outside_air_to_tissue(
    lung_hu: float, target: float
) -> None:
    """Every HU from -1100 to +100: the remap keeps their order, jumps nowhere (at the
    anchor, -1000 or 0), and leaves air below -1000 and tissue above 0 as they were; the
    stretch next to air stays bounded even for a lung at -990 HU."""
    from volseg.geometry import align_lung_density

    hu = torch.arange(-1100.0, 100.5, 0.5)
    lungs = torch.zeros_like(hu, dtype=torch.bool)
    lungs[(hu >= lung_hu - 5) & (hu <= lung_hu + 5)] = True
    out, _ = align_lung_density(hu, lungs, target)
    steps = torch.diff(out)
    assert bool((steps >= 0).all())
    assert float(steps.max()) <= 0.5 * 5.0  # slope <= 5: no jump, no unbounded stretch
    outside = (hu < -1000) | (hu > 0)
    assert torch.equal(out[outside], hu[outside])


def test_lung_density_recipe_aligns_with_lungs_and_keeps_old_cache_keys() -> None:
    """Off (the default, and every bundle from before the setting) leaves the cache key (the
    literal is 659df9f's, before the setting existed) and the network input as they were; on,
    the input depends on the lung mask given, and without one the scan goes in as scanned."""
    assert Recipe((1.5, 1.5, 5.0), WINDOW, (16, 16, 8)).cache_key() == "126384eca76385e7"
    base = _recipe((2.0, 2.0, 3.0))
    aligned = Recipe(base.spacing, WINDOW, base.patch_size, lung_density_hu=-820.0)
    assert aligned.cache_key() != base.cache_key()
    old = {k: v for k, v in base.to_json().items() if k != "lung_density_hu"}
    assert Recipe.from_json(old) == base and Recipe.from_json(aligned.to_json()) == aligned
    assert base.to_json()["version"] == 2 and aligned.to_json()["version"] == 3  # older: refuse
    ct = np.full((20, 16, 8), 40.0, np.float32)
    ct[4:16, 4:12, 1:7] = -900.0
    lungs = ct < -500
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    _, plain = base.apply(ct, affine, lungs=lungs)
    working, moved = aligned.apply(ct, affine, lungs=lungs)
    _, unaligned = aligned.apply(ct, affine)
    assert working.lung_shift_hu == pytest.approx(80.0)
    assert torch.equal(unaligned, plain)
    with pytest.raises(ValueError, match="lung mask shape"):
        aligned.apply(ct, affine, lungs=lungs[:-1])
    assert float(moved.max()) == float(plain.max())  # soft tissue unchanged
    assert float(moved[0, 0][moved[0, 0] < 0.2].mean()) > float(
        plain[0, 0][plain[0, 0] < 0.2].mean()
    )
