"""check-data: a clean dataset passes; each planted fault is reported naming its file."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volseg.cli import main
from volseg.data.check import Problem, check_dataset, hu_problem

AFFINE = np.diag([-2.0, 2.0, 5.0, 1.0])
SHAPE = (12, 10, 6)


def ct(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A tiny CT in HU: air around a soft-tissue block."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000, dtype=np.int16)
    data[2:-2, 2:-2] = 40 + rng.integers(-20, 20, size=data[2:-2, 2:-2].shape)
    return data


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def make_clean(root: Path) -> Path:
    """Three studies in two categories, one mask and a lungs/ folder."""
    save(root / "studies/CT-0/study_0001.nii.gz", ct(1))
    save(root / "studies/CT-1/study_0002.nii.gz", ct(2))
    save(root / "studies/CT-1/study_0003.nii.gz", ct(3))
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:6, 4:6, 2:4] = 1
    save(root / "masks/study_0002_mask.nii.gz", mask)
    save(root / "lungs/study_0002_lungs.nii.gz", mask)
    return root


def names(problems: list[Problem]) -> list[str]:
    return [p.file.name for p in problems]


def test_clean_dataset_passes(tmp_path: Path) -> None:
    assert check_dataset(make_clean(tmp_path)) == []
    assert main(["check-data", str(tmp_path), "--no-progress"]) == 0


def test_empty_folder(tmp_path: Path) -> None:
    problems = check_dataset(tmp_path)
    assert len(problems) == 1 and "studies" in problems[0].message
    (tmp_path / "studies" / "CT-1").mkdir(parents=True)
    problems = check_dataset(tmp_path)
    assert len(problems) == 1 and "no studies" in problems[0].message


def test_missing_root(tmp_path: Path) -> None:
    problems = check_dataset(tmp_path / "nope")
    assert len(problems) == 1 and "not found" in problems[0].message


def _truncated(path: Path) -> None:
    save(path, ct(9, (40, 40, 20)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _not_nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"this is a text file, not an image"))


def _image_2d(path: Path) -> None:
    save(path, ct(9)[:, :, 0])


def _image_4d(path: Path) -> None:
    save(path, np.stack([ct(9), ct(8)], axis=-1))


def _nan_float(path: Path) -> None:
    data = ct(9).astype(np.float32)
    data[3, 3, 3] = np.nan
    save(path, data)


def _unscaled(path: Path) -> None:
    save(path, (ct(9).astype(np.int32) + 1024).astype(np.uint16))


def _unit_scaled(path: Path) -> None:
    save(path, ((ct(9).astype(np.float32) + 1000) / 1400).clip(0, 1))


IMAGE_FAULTS = {
    "truncated": (_truncated, "decode"),
    "not_nifti": (_not_nifti, "not a readable NIfTI"),
    "2d": (_image_2d, "3D"),
    "4d": (_image_4d, "3D"),
    "nan": (_nan_float, "NaN"),
    "unscaled_0_4095": (_unscaled, "no negative values"),
    "scaled_0_1": (_unit_scaled, "rescaled"),
}


@pytest.mark.parametrize("fault", sorted(IMAGE_FAULTS))
def test_image_fault_is_reported(tmp_path: Path, fault: str) -> None:
    make_clean(tmp_path)
    plant, expected = IMAGE_FAULTS[fault]
    bad = tmp_path / "studies/CT-2/study_0009.nii.gz"
    plant(bad)
    problems = check_dataset(tmp_path)
    assert names(problems) == ["study_0009.nii.gz"], problems
    assert expected in problems[0].message


def _mask_shape(root: Path, path: Path) -> None:
    save(path, np.zeros((12, 10, 5), np.uint8))


def _mask_affine(root: Path, path: Path) -> None:
    affine = AFFINE.copy()
    affine[0, 3] += 1.0
    save(path, np.zeros(SHAPE, np.uint8), affine)


def _mask_value(root: Path, path: Path) -> None:
    mask = np.zeros(SHAPE, np.uint8)
    mask[1, 1, 1] = 2
    save(path, mask)


def _orphan(root: Path, path: Path) -> None:
    save(path.with_name("study_0042_mask.nii.gz"), np.zeros(SHAPE, np.uint8))


MASK_FAULTS = {
    "shape": (_mask_shape, "shape", "study_0003_mask.nii.gz"),
    "affine": (_mask_affine, "affine", "study_0003_mask.nii.gz"),
    "value_2": (_mask_value, "0 or 1", "study_0003_mask.nii.gz"),
    "orphan": (_orphan, "orphan", "study_0042_mask.nii.gz"),
}


@pytest.mark.parametrize("fault", sorted(MASK_FAULTS))
def test_mask_fault_is_reported(tmp_path: Path, fault: str) -> None:
    root = make_clean(tmp_path)
    plant, expected, name = MASK_FAULTS[fault]
    plant(root, root / "masks/study_0003_mask.nii.gz")
    problems = check_dataset(root)
    assert names(problems) == [name], problems
    assert expected in problems[0].message


def test_lungs_folder_checked_like_masks(tmp_path: Path) -> None:
    root = make_clean(tmp_path)
    save(root / "lungs/study_0001_lungs.nii.gz", np.zeros((3, 3, 3), np.uint8))
    problems = check_dataset(root)
    assert names(problems) == ["study_0001_lungs.nii.gz"]


def test_every_problem_reported_cli_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_clean(tmp_path)
    _image_2d(root / "studies/CT-2/study_0010.nii.gz")
    _mask_value(root, root / "masks/study_0003_mask.nii.gz")
    _orphan(root, root / "masks/x")
    (root / "studies/CT-2/notes.txt").write_text("hello")
    rc = main(["check-data", str(root), "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 2
    assert len(out) == 4
    for name in ("study_0010.nii.gz", "study_0003_mask", "study_0042_mask", "notes.txt"):
        assert sum(name in line for line in out) == 1, out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.inf, "1 NaN/inf voxels"),
        (-np.inf, "1 NaN/inf voxels"),
        (np.nan, "1 NaN/inf voxels"),
        (None, None),
    ],
)
def test_hu_problem_finds_any_non_finite_voxel(value, expected) -> None:
    """NaN spreads to the minimum and maximum and an infinity is one of them, so one pass
    over the extremes finds every non-finite volume; an ordinary CT passes."""
    ct = np.linspace(-1024.0, 1500.0, 4000, dtype=np.float32).reshape(20, 20, 10)
    if value is not None:
        ct[7, 3, 2] = value
    assert hu_problem(ct) == expected


def test_hu_problem_tells_rescaled_from_raw_values() -> None:
    unit = np.linspace(0.0, 1.0, 4000, dtype=np.float32).reshape(20, 20, 10)
    assert "rescaled" in hu_problem(unit)
    assert "no negative values" in hu_problem(unit * 4095.0)
