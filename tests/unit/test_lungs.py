"""Lung segmentation: Dice on a real CT and on phantoms, geometry kept, CLI modes; the
per-side volumes and QC of a given mask, by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.chest_phantom import chest_phantom
from volseg.cli import main
from volseg.data.lung_files import segment_lungs, segment_lungs_file, sitk_from_array
from volseg.data.lung_params import LungParams
from volseg.data.lungs import LungMask
from volseg.errors import ConfigError, InputError


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    hu, lungs, lesion = chest_phantom()
    affine = np.diag([-1.4, -1.4, 8.0, 1.0])  # LPS storage, like many scanners
    path = tmp_path_factory.mktemp("phantom") / "study_0001.nii.gz"
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), affine), str(path))
    return path, lungs, lesion


def test_real_ct_dice(real_ct: Path, real_lungs: Path, tmp_path: Path) -> None:
    out = segment_lungs_file(real_ct, tmp_path / "lungs.nii.gz")
    ref = np.asanyarray(nib.load(str(real_lungs)).dataobj)
    assert dice(np.asanyarray(nib.load(str(out)).dataobj), ref) >= 0.95


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("A", "I", "R"), ("S", "R", "P")])
def test_real_ct_any_orientation(
    real_ct: Path, real_lungs: Path, tmp_path: Path, axcodes: tuple[str, str, str]
) -> None:
    """The same scan stored in another voxel order gives the same mask, stored that way."""
    img = nib.load(str(real_ct))
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(axcodes)
    )
    moved = img.as_reoriented(ornt)
    src = tmp_path / "moved.nii.gz"
    nib.save(moved, str(src))
    out = nib.load(str(segment_lungs_file(src, tmp_path / "moved_lungs.nii.gz")))
    assert out.shape == moved.shape
    assert np.array_equal(out.affine, moved.affine)
    ref = nib.load(str(real_lungs)).as_reoriented(ornt)
    assert dice(np.asanyarray(out.dataobj), np.asanyarray(ref.dataobj)) >= 0.95


def test_phantom_anisotropic_with_consolidation(phantom_file, tmp_path: Path) -> None:
    """Thick 8 mm slices; a dense pleural lesion, trachea and bowel gas."""
    path, truth, lesion = phantom_file
    mask = np.asanyarray(nib.load(str(segment_lungs_file(path, tmp_path / "m.nii.gz"))).dataobj)
    assert dice(mask, truth) >= 0.98
    hu = np.asanyarray(nib.load(str(path)).dataobj)
    # the lesion's ground glass is inside the lung mask
    assert mask[lesion & (hu < -400)].mean() > 0.95
    # neither the bowel gas (lowest slices) nor the trachea (pure air outside the lungs)
    assert not mask[..., :4].any()
    assert not (mask.astype(bool) & ~truth & (hu < -900)).any()


def test_segment_lungs_keeps_sitk_geometry(real_ct: Path) -> None:
    data = np.asanyarray(nib.load(str(real_ct)).dataobj).astype(np.float32)
    image = sitk_from_array(data, nib.load(str(real_ct)).affine)
    mask = segment_lungs(image)
    assert mask.GetSize() == image.GetSize()
    assert mask.GetOrigin() == image.GetOrigin()
    assert mask.GetDirection() == image.GetDirection()
    assert mask.GetSpacing() == image.GetSpacing()
    import SimpleITK as sitk

    values = np.unique(sitk.GetArrayViewFromImage(mask))
    assert set(values.tolist()) == {0, 1}


def test_no_lungs_is_an_input_error(tmp_path: Path) -> None:
    src = tmp_path / "water.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 8), np.int16), np.eye(4)), str(src))
    with pytest.raises(InputError, match="water.nii.gz"):
        segment_lungs_file(src, tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


def test_refuses_to_overwrite_input(real_ct: Path) -> None:
    with pytest.raises(InputError, match="overwrite"):
        segment_lungs_file(real_ct, real_ct)


def test_bad_params() -> None:
    with pytest.raises(ConfigError, match="closing_mm"):
        LungParams(closing_mm=-1)


def test_cli_file_mode(real_ct: Path, tmp_path: Path) -> None:
    before = digest(real_ct)
    out = tmp_path / "sub" / "lungs.nii.gz"
    assert main(["lungs", "-i", str(real_ct), "-o", str(out), "--no-progress"]) == 0
    src, res = nib.load(str(real_ct)), nib.load(str(out))
    assert res.shape == src.shape
    assert np.array_equal(res.affine, src.affine)
    assert res.get_data_dtype() == np.uint8
    assert digest(real_ct) == before
    assert [p.name for p in out.parent.iterdir()] == ["lungs.nii.gz"]  # no temp files left


def test_cli_folder_mode(
    real_ct: Path, phantom_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "in" / "CT-1"
    folder.mkdir(parents=True)
    a = folder / "study_0007.nii.gz"
    a.write_bytes(real_ct.read_bytes())
    b = folder / "study_0001.nii"  # uncompressed also works
    nib.save(nib.load(str(phantom_file[0])), str(b))
    (folder / "study_0007_mask.nii.gz").write_bytes(b"masks in the folder are skipped")
    hashes = {p: digest(p) for p in (a, b)}
    out = tmp_path / "out"
    assert main(["lungs", "-i", str(tmp_path / "in"), "-o", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "lung_volumes.csv",
        "study_0001_lungs.nii.gz",
        "study_0007_lungs.nii.gz",
    ]
    import csv

    rows = {r["id"]: r for r in csv.DictReader((out / "lung_volumes.csv").open())}
    assert sorted(rows) == ["study_0001", "study_0007"]
    phantom = rows["study_0001"]  # two whole lungs of ~1.3 L each in the phantom
    assert 800 < float(phantom["right_lung_ml"]) < 1800
    assert 800 < float(phantom["left_lung_ml"]) < 1800
    total = float(phantom["right_lung_ml"]) + float(phantom["left_lung_ml"])
    assert abs(float(phantom["lung_volume_ml"]) - total) < 0.2
    assert "top" in rows["study_0007"]["lungs_cut_by_fov"]  # lung bases only
    for src in (a, b):
        res = nib.load(str(out / f"{src.name.split('.')[0]}_lungs.nii.gz"))
        ref = nib.load(str(src))
        assert res.shape == ref.shape
        assert np.array_equal(res.affine, ref.affine)
        assert digest(src) == hashes[src]


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert main(["lungs", "-i", str(bad), "-o", str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "scan.nii.gz" in err


def synth_masks(preset: str, category: str, seed: int, **params) -> tuple[np.ndarray, np.ndarray]:
    """(predicted lung mask, true lung mask) of one synthetic study, in its voxel order."""
    synth = pytest.importorskip("volseg.data.synth")
    import SimpleITK as sitk

    study = synth.synthesize_study(preset, category, seed)
    image = sitk_from_array(study.image.astype(np.float32), study.affine)
    mask = sitk.GetArrayFromImage(segment_lungs(image, LungParams(**params))).transpose(2, 1, 0)
    return mask, study.lungs


def test_dense_fill_recovers_consolidated_lung() -> None:
    """Severe disease: growing into consolidation adds lung, not heart or chest wall."""
    with_fill, truth = synth_masks("tiny", "CT-4", 0)
    without, _ = synth_masks("tiny", "CT-4", 0, dense_fill=False)
    assert dice(with_fill, truth) >= dice(without, truth) + 0.1
    added = with_fill.astype(bool) & ~without.astype(bool)
    assert added.sum() > 0.1 * truth.sum()
    # most of what is added is lung (measured 0.67; leaks are at the chest wall and heart)
    assert (added & (truth > 0)).sum() >= 0.55 * added.sum()


def test_dense_fill_leaves_mild_disease_and_real_ct_alone(real_ct: Path) -> None:
    """Below the extensive-disease gate (CT-1, and the real CT) the mask is unchanged."""
    mask, _ = synth_masks("tiny", "CT-1", 0)
    assert np.array_equal(mask, synth_masks("tiny", "CT-1", 0, dense_fill=False)[0])
    data = np.asanyarray(nib.load(str(real_ct)).dataobj).astype(np.float32)
    image = sitk_from_array(data, nib.load(str(real_ct)).affine)
    import SimpleITK as sitk

    on = sitk.GetArrayFromImage(segment_lungs(image))
    off = sitk.GetArrayFromImage(segment_lungs(image, LungParams(dense_fill=False)))
    assert np.array_equal(on, off)


def test_bad_dense_params() -> None:
    with pytest.raises(ConfigError, match="dense_min_ggo_share"):
        LungParams(dense_min_ggo_share=1.5)
    with pytest.raises(ConfigError, match="fat_hu"):
        LungParams(fat_hu=(-60.0, -130.0))


# The per-side volumes and QC of a given mask (LungMask.of_mask), by hand: boxes in a body
# slab (native x 1 .. n-2, RAS affine), so the midline is the middle of the slab and native
# x above it is the patient's right.


def _qc_of_boxes(shape, spacing_mm: float, right=None, left=None) -> LungMask:
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[1:-1] = 40.0
    mask = np.zeros(shape, dtype=np.uint8)
    for box in (right, left):
        if box is not None:
            mask[box] = 1
            hu[box] = -850.0
    return LungMask.of_mask(mask, hu, np.diag([spacing_mm] * 3 + [1.0]))


def test_of_mask_splits_the_volume_by_side_in_ml() -> None:
    """2 mm voxels (0.008 mL): 4 x 6 x 6 = 144 voxels on the right (1.152 mL) and
    3 x 6 x 6 = 108 on the left (0.864 mL); QC rounds to 0.1 mL."""
    right = (slice(14, 18), slice(3, 9), slice(2, 8))
    left = (slice(4, 7), slice(3, 9), slice(2, 8))
    lm = _qc_of_boxes((24, 12, 10), 2.0, right, left)
    assert lm.right_ml == pytest.approx(1.152) and lm.left_ml == pytest.approx(0.864)
    assert lm.qc() == {
        "right_lung_ml": 1.2,
        "left_lung_ml": 0.9,
        "lungs_cut_by_fov": [],
        "lung_warnings": ["lung volume 2 mL is below 1500 mL"],
    }
    assert lm.mask.dtype == np.uint8 and int(lm.mask.sum()) == 252
    expected_sides = np.zeros((24, 12, 10), dtype=np.uint8)
    expected_sides[right], expected_sides[left] = 1, 2  # RIGHT, LEFT; 0 off the mask
    assert np.array_equal(lm.sides, expected_sides)
    assert lm.side_shares(lm.mask) == pytest.approx((144.0, 108.0))

    one_voxel_left = _qc_of_boxes((24, 12, 10), 2.0, right, (5, 5, 5))
    assert one_voxel_left.left_ml == pytest.approx(0.008)


def test_of_mask_one_lung_at_the_top_of_the_scan() -> None:
    """Only a right lung, reaching the last (most superior) slice: no left volume at all,
    the cut named, and no volume floor applied to lungs partly out of view."""
    lm = _qc_of_boxes((24, 12, 10), 2.0, right=(slice(14, 18), slice(3, 9), slice(2, 10)))
    assert lm.right_ml == pytest.approx(192 * 0.008) and lm.left_ml == 0.0
    assert lm.cut_by_fov == ["top"]
    assert lm.warnings == [
        "lungs cut by the field of view (top): volumes and involvement cover only the part in view",
        "left lung not found (0 mL)",
    ]


@pytest.mark.parametrize(
    ("box", "faces"),
    [
        ((slice(24, 27), slice(8, 11), slice(29, 30)), ["top"]),  # last slice
        ((slice(24, 27), slice(8, 11), slice(0, 1)), ["bottom"]),
        ((slice(24, 27), slice(0, 1), slice(10, 13)), ["side"]),
        ((slice(24, 27), slice(19, 20), slice(10, 13)), ["side"]),
        ((slice(39, 40), slice(8, 11), slice(10, 13)), ["side"]),
        ((slice(0, 1), slice(8, 11), slice(10, 13)), ["side"]),
        ((slice(24, 27), slice(8, 11), slice(10, 13)), []),
    ],
)
def test_of_mask_names_each_face_a_one_voxel_thick_lung_touches(box, faces) -> None:
    assert _qc_of_boxes((40, 20, 30), 10.0, right=box).cut_by_fov == faces


def test_of_mask_a_one_voxel_lung_keeps_its_volume() -> None:
    lm = _qc_of_boxes((40, 20, 30), 10.0, right=(25, 10, 10))  # 1 mL
    assert (lm.right_ml, lm.left_ml) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("right", "left", "warnings"),
    [
        # 1 mL voxels, so the volumes are voxel counts. 750 + 750 mL: the 1500 mL floor.
        ((slice(22, 32), slice(2, 17), slice(2, 7)), (slice(5, 15), slice(2, 17), slice(2, 7)), []),
        # 4500 + 4500 mL: the 9000 mL ceiling.
        (
            (slice(22, 37), slice(2, 17), slice(4, 24)),
            (slice(3, 18), slice(2, 17), slice(4, 24)),
            [],
        ),
        # 75 of 1500 mL: the smaller lung at exactly 5 % is not missing.
        ((slice(25, 30), slice(5, 10), slice(5, 8)), (slice(1, 20), slice(2, 17), slice(2, 7)), []),
        (
            (slice(25, 27), slice(5, 10), slice(5, 6)),  # 10 of 1610 mL: under 5 %
            (slice(3, 19), slice(2, 12), slice(2, 12)),
            ["right lung not found (10 mL)"],
        ),
        (
            (slice(22, 38), slice(2, 12), slice(2, 12)),
            None,
            ["left lung not found (0 mL)"],
        ),
        (
            (slice(22, 32), slice(2, 12), slice(2, 7)),
            (slice(5, 15), slice(2, 12), slice(2, 7)),
            ["lung volume 1000 mL is below 1500 mL"],
        ),
        (
            (slice(21, 37), slice(2, 18), slice(5, 23)),
            (slice(3, 19), slice(2, 18), slice(5, 23)),
            ["lung volume 9216 mL is above 9000 mL"],
        ),
        # Cut at the top and the side: a small lung may be the part out of view.
        (
            (slice(25, 40), slice(2, 17), slice(20, 30)),
            (slice(5, 7), slice(5, 10), slice(5, 6)),
            [
                "lungs cut by the field of view (top, side): volumes and involvement cover "
                "only the part in view"
            ],
        ),
    ],
)
def test_of_mask_warnings_at_their_bounds(right, left, warnings) -> None:
    assert _qc_of_boxes((40, 20, 30), 10.0, right, left).warnings == warnings


def test_side_shares_count_voxels_by_side_and_share_the_rest_pro_rata() -> None:
    """Sides (R, R, L, none): all four voxels split 2 : 1 over the three with a side (8/3,
    4/3); the one without a side splits as the lung volumes, 3 : 1 mL."""
    lm = LungMask(
        mask=np.ones((4, 1, 1), np.uint8),
        right_ml=3.0,
        left_ml=1.0,
        sides=np.array([1, 1, 2, 0], np.uint8).reshape(4, 1, 1),
    )
    assert lm.side_shares(np.ones((4, 1, 1), bool)) == pytest.approx((8 / 3, 4 / 3))
    assert lm.side_shares(np.array([0, 0, 0, 1]).reshape(4, 1, 1)) == pytest.approx((0.75, 0.25))
    with pytest.raises(ValueError, match="^this lung mask carries no side map$"):
        LungMask(lm.mask, 3.0, 1.0).side_shares(lm.mask)


def test_between_lungs_is_the_mediastinum_of_intact_lungs_only() -> None:
    """The region growth may not enter lies between two solid lungs (inside the hull of
    both, outside each one's own hull); a slice whose lung is scattered remnants has none,
    nor has a slice with one lung."""
    from volseg.data.lung_fill import LEFT, RIGHT, between_lungs

    sides = np.zeros((3, 40, 60), dtype=np.uint8)
    sides[0, 5:35, 5:20] = RIGHT  # two intact lungs 20 columns apart
    sides[0, 5:35, 40:55] = LEFT
    sides[1] = sides[0]
    sides[1, :, 5:20] = 0
    sides[1, 5:35:6, 5:20:6] = RIGHT  # right lung: scattered remnants
    sides[2, 5:35, 5:20] = RIGHT  # right lung alone
    out = between_lungs(sides, 0.5)
    assert out[0, 5:35, 20:40].all()
    assert not (out[0] & (sides[0] > 0)).any()
    assert not out[0, :5].any() and not out[0, 35:].any()
    assert not out[0, :, :5].any() and not out[0, :, 55:].any()
    assert not out[1].any()
    assert not out[2].any()
    assert between_lungs(sides, 0.0)[1].any()  # no solidity asked: the remnants count


def _phantom_on_a_pad() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The phantom with a bony rib cage and a foam pad (-880 HU) filling the gap between
    its back and the table, cut to a field of view that cuts the body and both lungs on
    both sides (the 4D-Lung radiotherapy CT's set-up): the pad then reaches the side of the
    view without touching the room air. Returns (hu, lungs, pad)."""
    spacing, shape = (1.4, 1.4, 8.0), (200, 160, 36)
    hu, lungs, _ = chest_phantom(spacing, shape)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape[:2], spacing[:2], strict=True)]
    x, y = np.meshgrid(*axes, indexing="ij")
    ring = (x / 128) ** 2 + ((y + 5) / 93) ** 2
    hu[(ring > 0.88) & (ring <= 0.95)] = 400.0  # ribs, spine and sternum as one shell
    pad = (ring > 1) & (y > 0) & (y < 105) & (np.abs(x) < 120)
    rng = np.random.default_rng(1)
    hu[pad] = -880.0 + rng.normal(0, 20, (int(pad.sum()), shape[2]))
    keep = np.abs(x[:, 0]) < 90  # a tight field of view: both lungs reach x = ±105
    pad3 = np.broadcast_to(pad[..., None], shape)
    return hu[keep], lungs[keep], pad3[keep]


def test_a_pad_under_the_patient_in_a_tight_field_of_view_is_not_lung() -> None:
    """Lung-like air that reaches the side of the view is lung only inside the bony thorax:
    the cut lungs stay (they lie inside their ribs), the pad behind the spine goes."""
    from volseg.data.lungs import lung_mask

    hu, lungs, pad = _phantom_on_a_pad()
    affine = np.diag([-1.4, -1.4, 8.0, 1.0])
    result = lung_mask(hu, affine)
    mask = result.mask.astype(bool)
    assert not (mask & pad).any()
    assert dice(mask, lungs) > 0.95
    assert "side" in result.cut_by_fov
    # Without the rule the pad is taken for a lung (so this test can fail).
    loose = lung_mask(hu, affine, LungParams(cut_lung_in_thorax=0.0)).mask.astype(bool)
    assert (loose & pad).sum() > 0.5 * pad.sum()


def test_cut_lungs_are_kept_when_the_view_shows_no_rib_cage() -> None:
    """A field of view that cuts both lungs and shows only the spine cannot tell inside
    the thorax from outside: the cut lungs stay lungs (with a vertebra taken for the whole
    bony thorax they would be dropped)."""
    from volseg.data.lungs import lung_mask

    spacing, shape = (1.4, 1.4, 8.0), (200, 160, 36)
    hu, lungs, _ = chest_phantom(spacing, shape)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape[:2], spacing[:2], strict=True)]
    x, y = np.meshgrid(*axes, indexing="ij")
    hu[(x / 15) ** 2 + ((y - 70) / 15) ** 2 <= 1] = 400.0  # a vertebral body, no ribs
    keep = np.abs(x[:, 0]) < 90
    hu, lungs = hu[keep], lungs[keep]
    affine = np.diag([-1.4, -1.4, 8.0, 1.0])
    assert dice(lung_mask(hu, affine).mask, lungs) > 0.95
    assert dice(lung_mask(hu, affine, LungParams(thorax_min_mm2=0.0)).mask, lungs) < 0.5
