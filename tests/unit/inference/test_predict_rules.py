"""The rules behind predict's numbers, by hand: CT grade at MosMed's bounds, small-component
removal in mm³, flip test-time augmentation, and DICOM series variants (rescale slope and
intercept, oblique orientation, several series in one folder)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_series import write_ct_series
from tests.unit.inference.test_predictor import oracle_bundle  # noqa: F401  (fixture)
from volseg.stages.predict import run_predict

SHAPE = (40, 40, 10)
SPACING = (1.5, 1.5, 5.0)  # the oracle bundle's working grid: no resampling
VOXEL_ML = 1.5 * 1.5 * 5.0 / 1000.0


def _scan(folder: Path, hu: np.ndarray, lungs: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    aff = np.diag([*SPACING, 1.0])
    src = folder / "scan_a.nii.gz"
    nib.save(nib.Nifti1Image(hu.astype(np.int16), aff), src)
    if lungs is not None:
        nib.save(nib.Nifti1Image(lungs.astype(np.uint8), aff), folder / "scan_a_lungs.nii.gz")
    return src


def _predict(bundle: Path, src: Path, out: Path, **kwargs) -> tuple[np.ndarray, dict]:
    run_predict(bundle.parents[1], src, out, **kwargs)
    mask = np.asarray(nib.load(out / "scan_a_mask.nii.gz").dataobj)
    return mask, json.loads((out / "scan_a.json").read_text())


@pytest.mark.parametrize(
    ("rows", "involvement", "grade"),
    [(0, 0.0, 0), (1, 2.5, 1), (9, 22.5, 1), (10, 25.0, 2), (20, 50.0, 3), (30, 75.0, 4)],
)
def test_predict_grades_at_mosmeds_bounds(
    oracle_bundle: Path,  # noqa: F811
    tmp_path: Path,
    rows: int,
    involvement: float,
    grade: int,
) -> None:
    """Lungs fill the volume (16,000 voxels); each lesion row is 40 x 10 = 400 voxels =
    2.5 % of them. MosMed: CT-1 below 25 %, CT-2 from 25 %, CT-3 from 50 %, CT-4 from 75 %."""
    hu = np.full(SHAPE, -850)
    hu[-1, -1, -1] = -900  # not blank even without lesion
    hu[:rows] = 200
    src = _scan(tmp_path / "in", hu, np.ones(SHAPE))
    mask, info = _predict(oracle_bundle, src, tmp_path / "out", lungs=tmp_path / "in")
    assert mask.sum() == rows * 400
    assert info["involvement_pct"] == pytest.approx(involvement)
    assert info["lesion_volume_ml"] == pytest.approx(rows * 400 * VOXEL_ML)
    assert info["lung_volume_ml"] == pytest.approx(16000 * VOXEL_ML)
    assert info["ct_grade"] == grade


def test_small_components_are_removed_by_volume_in_mm3(
    oracle_bundle: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A 2x2x2 blob (8 voxels, 90 mm³) and a 4x4x5 one (80 voxels, 900 mm³): a 100 mm³
    minimum drops the first only, a 1000 mm³ one both, none keeps both."""
    hu = np.full(SHAPE, -850)
    hu[5:7, 5:7, 2:4] = 200
    hu[20:24, 20:24, 3:8] = 200
    src = _scan(tmp_path / "in", hu)
    kept = {}
    for minimum in (0, 100, 1000):
        mask, _ = _predict(
            oracle_bundle,
            src,
            tmp_path / f"out{minimum}",
            use_lungs=False,
            min_component_mm3=minimum,
        )
        kept[minimum] = (int(mask[5:7, 5:7, 2:4].sum()), int(mask[20:24, 20:24, 3:8].sum()))
    assert kept == {0: (8, 80), 100: (0, 80), 1000: (0, 0)}


def test_flip_tta_maps_each_flip_back(oracle_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """The oracle is voxel-wise, so a correct flip TTA (each flipped prediction flipped back)
    gives exactly the un-augmented mask, here an asymmetric L-shaped lesion."""
    hu = np.full(SHAPE, -850)
    hu[3:20, 4:8, 1:4] = 200
    hu[3:7, 8:30, 1:4] = 200
    src = _scan(tmp_path / "in", hu)
    plain, _ = _predict(oracle_bundle, src, tmp_path / "plain", use_lungs=False, tta=False)
    flipped, info = _predict(oracle_bundle, src, tmp_path / "tta", use_lungs=False, tta=True)
    assert info["options"]["tta"] is True
    assert plain.sum() == (17 * 4 + 4 * 22) * 3
    assert np.array_equal(plain, flipped)


def _series_mask(bundle: Path, folder: Path, out: Path, **kwargs) -> tuple[nib.Nifti1Image, dict]:
    run_predict(bundle.parents[1], folder, out, use_lungs=False, **kwargs)
    masks = sorted(out.glob("*_mask.nii.gz"))
    assert len(masks) == 1, masks
    sid = masks[0].name[: -len("_mask.nii.gz")]
    return nib.load(masks[0]), json.loads((out / f"{sid}.json").read_text())


def _series_hu() -> np.ndarray:
    """(slices, rows, columns) HU: lung with a 3x4x5-voxel lesion at slices 2-4."""
    hu = np.full((8, 24, 20), -850, dtype=np.int16)
    hu[2:5, 6:10, 5:10] = 100
    return hu


def test_dicom_rescale_slope_and_intercept_are_applied(
    oracle_bundle: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Stored values (HU + 1024) / 2 with slope 2 and intercept -1024 read back as HU: the
    lesion (100 HU, stored 562) is found; read raw, every voxel would look like lesion."""
    hu = _series_hu()
    write_ct_series(tmp_path / "s", hu, spacing=(1.5, 1.5, 5.0), slope=2.0, intercept=-1024.0)
    mask, info = _series_mask(oracle_bundle, tmp_path / "s", tmp_path / "out")
    assert np.asanyarray(mask.dataobj).sum() == 3 * 4 * 5
    assert info["lesion_volume_ml"] == pytest.approx(60 * VOXEL_ML)


def test_oblique_dicom_series_lands_in_the_world(
    oracle_bundle: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Rows and columns rotated 20° about the patient's z axis: the mask's affine carries
    the series' direction cosines, and the lesion's centre maps to the world position of
    its pixels (ImagePositionPatient + column/row steps), within 0.5 mm."""
    hu = _series_hu()
    angle = np.deg2rad(20.0)
    row_dir = (np.cos(angle), np.sin(angle), 0.0)  # direction of increasing column index
    col_dir = (-np.sin(angle), np.cos(angle), 0.0)  # direction of increasing row index
    origin = (-10.0, 20.0, 30.0)
    write_ct_series(
        tmp_path / "s", hu, spacing=(1.5, 1.5, 5.0), origin=origin, orientation=(row_dir, col_dir)
    )
    mask, _ = _series_mask(oracle_bundle, tmp_path / "s", tmp_path / "out")
    data = np.asanyarray(mask.dataobj)
    assert data.sum() > 0.8 * 60  # the oblique grid is resampled onto the working grid
    centre_vox = np.argwhere(data > 0).mean(axis=0)
    world_ras = mask.affine[:3, :3] @ centre_vox + mask.affine[:3, 3]
    # lesion centre in the series: slice 3, row 7.5, column 7 (LPS, DICOM's patient frame)
    lps = np.array(origin) + 7.0 * 1.5 * np.array(row_dir) + 7.5 * 1.5 * np.array(col_dir)
    lps = lps + np.array([0.0, 0.0, 3.0 * 5.0])
    expected_ras = lps * np.array([-1.0, -1.0, 1.0])
    assert np.linalg.norm(world_ras - expected_ras) < 0.5


def test_several_series_in_one_folder_are_chosen_by_uid(
    oracle_bundle: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two series in one folder: --series picks one by its UID (its lesion, not the other's)."""
    hu_a = _series_hu()
    hu_b = np.full_like(hu_a, -850)
    hu_b[5:7, 15:20, 12:16] = 100  # 2 x 5 x 4 = 40 voxels
    uid_a = write_ct_series(tmp_path / "s", hu_a, spacing=(1.5, 1.5, 5.0), prefix="a")
    uid_b = write_ct_series(tmp_path / "s", hu_b, spacing=(1.5, 1.5, 5.0), prefix="b")
    for uid, voxels in ((uid_a, 60), (uid_b, 40)):
        mask, info = _series_mask(oracle_bundle, tmp_path / "s", tmp_path / uid, series=uid)
        assert np.asanyarray(mask.dataobj).sum() == voxels
        assert info["series_uid"] == uid
