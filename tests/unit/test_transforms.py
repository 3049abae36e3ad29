"""MONAI transform chains: preprocessing keeps geometry (exactly invertible), training crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from volseg.data.transforms import (
    AboveThreshold,
    eval_transforms,
    inverse_transform,
    preprocess_transforms,
    preprocessing_settings,
    train_transforms,
)
from volseg.io import read_nifti, write_nifti

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


def _roundtrip(image: Path, label: Path, spacing) -> tuple[dict, torch.Tensor]:
    """Preprocess image+label, then invert the preprocessed label back to the source grid."""
    pre = preprocess_transforms(spacing, WINDOW, ("image", "label"))
    out = pre({"image": str(image), "label": str(label)})
    out["pred"] = out["label"].clone()
    back = inverse_transform(pre, ("pred",))(out)["pred"]
    return out, back


@pytest.mark.parametrize("name", list(AFFINES))
def test_same_spacing_roundtrip_returns_the_painted_voxel(tmp_path: Path, name: str) -> None:
    affine = AFFINES[name]
    ct = _ct()
    label = np.zeros(ct.shape, np.uint8)
    label[20, 11, 6] = 1
    write_nifti(tmp_path / "ct.nii.gz", ct, affine)
    write_nifti(tmp_path / "lab.nii.gz", label, affine)
    out, back = _roundtrip(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", (2.0, 2.0, 3.0))
    # the preprocessed grid is RAS-oriented
    import nibabel as nib

    assert "".join(nib.aff2axcodes(out["image"].affine.numpy())) == "RAS"
    assert tuple(back.shape[1:]) == ct.shape
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-4)
    np.testing.assert_array_equal(np.argwhere(back[0].numpy() > 0.5), [[20, 11, 6]])


@pytest.mark.parametrize("name", list(AFFINES))
def test_resampled_roundtrip_keeps_grid_and_block(tmp_path: Path, name: str) -> None:
    affine = AFFINES[name]
    ct = _ct()
    label = np.zeros(ct.shape, np.uint8)
    label[18:23, 10:15, 5:8] = 1
    write_nifti(tmp_path / "ct.nii.gz", ct, affine)
    write_nifti(tmp_path / "lab.nii.gz", label, affine)
    out, back = _roundtrip(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", (1.5, 2.5, 4.0))
    spacing = np.linalg.norm(out["image"].affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, (1.5, 2.5, 4.0), atol=1e-5)
    assert tuple(back.shape[1:]) == ct.shape
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-4)
    got = back[0].numpy() > 0.5
    assert got[20, 12, 6]  # the block's centre voxel comes back where it was
    dice = 2 * (got & (label > 0)).sum() / (got.sum() + label.sum())
    assert dice > 0.6


def test_real_ct_roundtrip(tmp_path: Path, real_ct: Path) -> None:
    data, affine = read_nifti(real_ct)
    label = np.zeros(data.shape, np.uint8)
    c = tuple(s // 2 for s in data.shape)
    label[c[0] - 3 : c[0] + 4, c[1] - 3 : c[1] + 4, c[2] - 2 : c[2] + 3] = 1
    write_nifti(tmp_path / "lab.nii.gz", label, affine)
    out, back = _roundtrip(real_ct, tmp_path / "lab.nii.gz", (1.5, 1.5, 5.0))
    img = out["image"]
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert tuple(back.shape[1:]) == data.shape
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-4)
    assert back[0].numpy()[c] > 0.5


def test_image_window_and_body_crop(tmp_path: Path) -> None:
    ct = np.full((40, 30, 10), -1000, np.int16)
    ct[10:30, 8:22, 2:8] = 1000  # body: clipped to 1 by the window
    ct[15:20, 10:15, 4:6] = -1000  # air inside the body is kept (within the bounding box)
    write_nifti(tmp_path / "ct.nii.gz", ct, np.diag([2.0, 2.0, 3.0, 1.0]))
    out = eval_transforms((2.0, 2.0, 3.0), WINDOW)({"image": str(tmp_path / "ct.nii.gz")})
    img = out["image"][0].numpy()
    assert img.shape == (20 + 8, 14 + 8, 10)  # margin 4, z clipped to the volume
    assert img.max() == pytest.approx(1.0) and img.min() == pytest.approx(0.0)
    assert img.dtype == np.float32


def test_empty_scan_is_not_cropped_to_nothing() -> None:
    select = AboveThreshold(-500)
    x = np.full((3, 4, 5), -1000.0)
    assert select(x).all()
    x[1, 1, 1] = 0
    assert select(x).sum() == 1


def test_bad_keys_and_window() -> None:
    with pytest.raises(ValueError, match="image"):
        preprocess_transforms((1, 1, 1), WINDOW, ("label",))
    with pytest.raises(ValueError, match="unknown"):
        preprocess_transforms((1, 1, 1), WINDOW, ("image", "seg"))
    with pytest.raises(ValueError, match="hu_window"):
        preprocess_transforms((1, 1, 1), (400, -1000))


def test_settings_change_with_every_setting() -> None:
    base = preprocessing_settings((1.5, 1.5, 5.0), WINDOW)
    assert base != preprocessing_settings((1.5, 1.5, 4.0), WINDOW)
    assert base != preprocessing_settings((1.5, 1.5, 5.0), (-1000.0, 300.0))
    assert base != preprocessing_settings((1.5, 1.5, 5.0), WINDOW, margin=2)


@pytest.mark.parametrize("labeled", [True, False])
def test_train_transforms_crop_shapes_and_determinism(labeled: bool) -> None:
    from monai.data import MetaTensor

    rng = np.random.default_rng(0)
    shape = (20, 18, 6)  # smaller than the patch along z: padded
    lungs = np.zeros(shape, np.float32)
    lungs[3:17, 3:15, 1:5] = 1
    label = np.zeros(shape, np.float32)
    label[5:7, 5:7, 2:4] = 1
    data = {
        "image": MetaTensor(torch.as_tensor(rng.random(shape, dtype=np.float32))[None]),
        "label": MetaTensor(torch.as_tensor(label)[None]),
        "lungs": MetaTensor(torch.as_tensor(lungs)[None]),
    }
    chain = train_transforms((12, 12, 8), labeled=labeled, pos_fraction=1.0, num_samples=3)
    chain.set_random_state(seed=5)
    first = chain(dict(data))
    chain.set_random_state(seed=5)
    second = chain(dict(data))
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert tuple(a["image"].shape) == (1, 12, 12, 8)
        assert torch.equal(a["image"], b["image"])
        key = "label" if labeled else "lungs"
        assert set(torch.unique(a[key]).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="pos_fraction"):
        train_transforms((8, 8, 8), pos_fraction=1.5)
