"""decode_nifti: the one NIfTI voxel decoder gives nibabel's values, faster, and names bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volseg.errors import InputError
from volseg.io import decode_nifti, load_nifti, read_nifti


def _write(path: Path, data: np.ndarray, slope: float | None = None, inter: float | None = None):
    img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 8.0, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def _volume(dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=(23, 17, 5)).astype(dtype)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [None, np.float32])
def test_decoded_voxels_equal_nibabels(tmp_path: Path, suffix: str, dtype) -> None:
    path = _write(tmp_path / f"ct{suffix}", _volume(np.int16))
    expected = np.asanyarray(nib.load(str(path)).dataobj)
    expected = expected if dtype is None else expected.astype(dtype)
    got = decode_nifti(load_nifti(path), path, dtype)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_header_scaling_applied_as_nibabel_does(tmp_path: Path) -> None:
    """A uint16 file with slope 0.1 and intercept -1024 (raw values, not HU): scaled as
    nibabel scales (float64), then rounded once to float32."""
    raw = _volume(np.int16).astype(np.uint16) + 1100
    path = _write(tmp_path / "scaled.nii.gz", raw, slope=0.1, inter=-1024.0)
    got = decode_nifti(load_nifti(path), path, np.float32)
    expected = (raw.astype(np.float64) * np.float32(0.1) - 1024.0).astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_singleton_fourth_dimension_dropped(tmp_path: Path) -> None:
    data = _volume(np.int16)[..., None]
    path = _write(tmp_path / "ct4d.nii.gz", data)
    array, affine = read_nifti(path)
    assert array.shape == data.shape[:3] and np.array_equal(array, data[..., 0])
    assert np.allclose(affine, np.diag([0.7, 0.7, 8.0, 1.0]))


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "ct.nii.gz", _volume(np.int16))
    img = load_nifti(path)  # header intact
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"ct\.nii\.gz: could not decode image data"):
        decode_nifti(img, path)


def test_multi_member_gzip_decodes_whole(tmp_path: Path) -> None:
    """A .nii.gz written as two gzip members (as some converters stream it) is read whole."""
    path = _write(tmp_path / "ct.nii", _volume(np.int16))
    raw = path.read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    expected = np.asanyarray(nib.load(str(path)).dataobj)
    assert np.array_equal(decode_nifti(load_nifti(two), two), expected)


def test_row_major_order_on_request(tmp_path: Path) -> None:
    """``order="C"`` gives the same voxels in row-major order (the predict decode's layout)."""
    data = _volume(np.int16)
    path = _write(tmp_path / "ct.nii.gz", data)
    kept = decode_nifti(load_nifti(path), path, np.float32)
    row_major = decode_nifti(load_nifti(path), path, np.float32, order="C")
    assert kept.flags.f_contiguous and row_major.flags.c_contiguous
    assert np.array_equal(row_major, data.astype(np.float32))
