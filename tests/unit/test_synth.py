"""Synthetic MosMed-like dataset: layout, geometry, HU realism, truth consistency, determinism."""

from __future__ import annotations

import csv
import json
import multiprocessing
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from volseg.cli import main
from volseg.data import layout
from volseg.data.synth import (
    PRESETS,
    SYNTH_JSON,
    SynthPreset,
    study_plan,
    synthesize_dataset,
    synthesize_study,
)
from volseg.data.synth_anatomy import TISSUE
from volseg.data.synth_grid import (
    average_subslices,
    las_affine,
    resize,
    subdivide_slices,
    world_axes,
)
from volseg.errors import InputError
from volseg.quantify import grade_from_involvement, quantify, spacing_from_affine

TINY = PRESETS["tiny"]


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / layout.MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, img


def _study_files(root: Path, row: dict[str, str]) -> dict[str, Path]:
    sid = row["study_id"]
    return {
        "image": layout.image_path(root, row["category"], sid),
        "lungs": layout.lungs_path(root / layout.LUNGS_DIR, sid),
        "truth": layout.truth_path(root, sid),
    }


@pytest.fixture(scope="module")
def rows(tiny_dataset: Path) -> list[dict[str, str]]:
    return _manifest(tiny_dataset)


@pytest.fixture(scope="module")
def tissue_studies() -> list:
    """A CT-2 and a CT-3 study with their tissue label maps (for HU statistics)."""
    return [synthesize_study(TINY, "CT-2", 11), synthesize_study(TINY, "CT-3", 12)]


# --- grid helpers ---------------------------------------------------------------------------


def test_las_affine_orientation_and_subslices() -> None:
    affine = las_affine((10, 12, 4), (2.0, 3.0, 9.0), (5.0, -7.0, 20.0))
    assert nib.aff2axcodes(affine) == ("L", "A", "S")
    x, y, z = world_axes(affine, (10, 12, 4))
    assert x.ravel()[0] > x.ravel()[-1]  # axis 0 runs right -> left
    assert np.isclose(x.mean(), 5.0) and np.isclose(y.mean(), -7.0) and np.isclose(z.mean(), 20.0)
    fine = subdivide_slices(affine, 3)
    _, _, zf = world_axes(fine, (10, 12, 12))
    assert np.allclose(average_subslices(zf.reshape(1, 1, 12), 3).ravel(), z.ravel())


def test_resize_matches_scipy_zoom() -> None:
    field = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    ref = ndimage.zoom(field, (6.0, 3.0, 4.0), order=1, grid_mode=True, mode="nearest")
    assert np.allclose(resize(field, (30, 21, 12)), ref, atol=1e-5)


# --- layout ---------------------------------------------------------------------------------


def test_layout_and_names(tiny_dataset: Path, rows: list[dict[str, str]]) -> None:
    plan = study_plan(TINY)
    assert [r["study_id"] for r in rows] == [sid for sid, _, _ in plan]
    assert list(rows[0]) == [
        "study_id",
        "category",
        "labeled",
        "involvement_pct",
        "lesion_ml",
        "lung_ml",
        "site",
        "findings",
    ]
    assert [r["study_id"] for r in rows[:2]] == ["study_0001", "study_0002"]
    categories = [r["category"] for r in rows]
    assert categories == sorted(categories)  # CT-0 first, then CT-1, ...
    for cat in layout.CATEGORIES:
        assert categories.count(cat) == TINY.counts[cat]
    labeled = [i for i, r in enumerate(rows) if r["labeled"] == "1"]
    assert len(labeled) == TINY.n_labeled
    assert labeled == list(range(labeled[0], labeled[0] + TINY.n_labeled))  # contiguous block
    assert labeled[0] == categories.index("CT-1")
    masks = sorted(p.name for p in (tiny_dataset / layout.MASKS_DIR).iterdir())
    assert masks == [f"{rows[i]['study_id']}_mask.nii.gz" for i in labeled]
    for row in rows:
        for path in _study_files(tiny_dataset, row).values():
            assert path.is_file(), path
    n_images = sum(1 for _ in (tiny_dataset / layout.STUDIES_DIR).glob("CT-*/study_*.nii.gz"))
    assert n_images == TINY.n_studies
    info = json.loads((tiny_dataset / SYNTH_JSON).read_text())
    assert info["preset"] == "tiny" and info["seed"] == 0 and info["version"] >= 1
    assert not list(tiny_dataset.rglob(".*tmp*"))  # no leftover temporary files


def test_geometry_and_dtypes(tiny_dataset: Path, rows: list[dict[str, str]]) -> None:
    for row in rows:
        files = _study_files(tiny_dataset, row)
        image, affine, img = _load(files["image"])
        assert image.dtype == np.int16 and image.shape == TINY.shape
        assert nib.aff2axcodes(affine) == ("L", "A", "S")
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.allclose(spacing_from_affine(affine), TINY.spacing)
        for key in ("lungs", "truth"):
            mask, mask_affine, _ = _load(files[key])
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            assert np.allclose(mask_affine, affine)


# --- truth consistency ----------------------------------------------------------------------


def test_manifest_matches_truth_files(tiny_dataset: Path, rows: list[dict[str, str]]) -> None:
    for row in rows:
        files = _study_files(tiny_dataset, row)
        lesion, affine, _ = _load(files["truth"])
        lungs, _, _ = _load(files["lungs"])
        q = quantify(lesion, lungs, spacing_from_affine(affine))
        assert float(row["involvement_pct"]) == pytest.approx(q["involvement_pct"], abs=1e-4)
        assert float(row["lesion_ml"]) == pytest.approx(q["lesion_volume_ml"], abs=1e-3)
        assert float(row["lung_ml"]) == pytest.approx(q["lung_volume_ml"], abs=1e-3)
        assert f"CT-{grade_from_involvement(q['involvement_pct'])}" == row["category"]
        if row["category"] == "CT-0":
            assert lesion.sum() == 0
        assert not np.any(lesion.astype(bool) & ~lungs.astype(bool)), "lesion outside lungs"
        assert 1500.0 < q["lung_volume_ml"] < 8000.0  # adult lungs


def test_labeled_masks_equal_truth(tiny_dataset: Path, rows: list[dict[str, str]]) -> None:
    for row in rows:
        mask = layout.mask_path(tiny_dataset, row["study_id"])
        assert mask.exists() == (row["labeled"] == "1")
        if mask.exists():
            truth, affine, _ = _load(layout.truth_path(tiny_dataset, row["study_id"]))
            labeled, mask_affine, _ = _load(mask)
            assert np.array_equal(truth, labeled) and np.allclose(affine, mask_affine)
            assert labeled.sum() > 0


def test_lesions_posterior_peripheral_bilateral(
    tiny_dataset: Path, rows: list[dict[str, str]]
) -> None:
    """Posterior and sub-pleural predilection and bilateral disease, in world coordinates."""
    posterior = anterior = 0
    lesion_depth, lung_depth = [], []
    for row in rows:
        if row["category"] == "CT-0":
            continue
        files = _study_files(tiny_dataset, row)
        lesion, affine, _ = _load(files["truth"])
        lungs, _, _ = _load(files["lungs"])
        lung_xyz = nib.affines.apply_affine(affine, np.argwhere(lungs))
        les_xyz = nib.affines.apply_affine(affine, np.argwhere(lesion))
        y_mid = np.median(lung_xyz[:, 1])
        posterior += int((les_xyz[:, 1] < y_mid).sum())
        anterior += int((les_xyz[:, 1] >= y_mid).sum())
        x_mid = lung_xyz[:, 0].mean()
        assert (les_xyz[:, 0] > x_mid).any() and (les_xyz[:, 0] < x_mid).any(), row["study_id"]
        if row["category"] == "CT-1":
            depth = ndimage.distance_transform_edt(lungs, sampling=spacing_from_affine(affine))
            lesion_depth.append(depth[lesion > 0].mean())
            lung_depth.append(depth[lungs > 0].mean())
    assert posterior > 1.3 * anterior
    assert np.mean(lesion_depth) < np.mean(lung_depth)


# --- realism --------------------------------------------------------------------------------


def _hu(study, tissue: str) -> np.ndarray:
    return study.image[study.labels == TISSUE[tissue]].astype(np.float64)


def test_hu_statistics_per_tissue(tissue_studies: list) -> None:
    for study in tissue_studies:
        lung = _hu(study, "lung")  # healthy parenchyma outside lesions
        assert -900.0 <= lung.mean() <= -650.0  # real CTs: -874 to -683 HU (docs/synth.md)
        assert -1010.0 <= np.median(_hu(study, "air")) <= -975.0  # partial volume at gut gas
        assert 0.0 <= _hu(study, "soft").mean() <= 80.0
        assert -150.0 <= np.median(_hu(study, "fat")) <= -50.0  # breast edges blend with air
        bone = _hu(study, "bone")
        assert bone.size > 0 and bone.mean() > 300.0 and (bone > 400).any()  # cortex, blurred
        assert _hu(study, "airway").mean() < -600.0
        assert -750.0 <= _hu(study, "ggo").mean() <= -300.0
        cons = _hu(study, "consolidation")
        assert cons.size > 0 and -60.0 <= cons.mean() <= 60.0  # unenhanced consolidation
        assert lung.std() < 150.0  # texture, gradient and findings, not speckle


def test_noise_follows_the_site() -> None:
    """Image noise in the air around the patient has the site's level at this voxel size
    (15-60 HU at 1 mm^3, falling as volume^-0.4), whatever the preset."""
    from scipy import ndimage

    from volseg.data.synth_site import ScanSite

    for preset in ("tiny", "demo"):
        for noise_hu in (15.0, 60.0):
            site = ScanSite(noise_hu=noise_hu, kernel_mm=0.5, blood_hu=40.0, padding_hu=None)
            study = synthesize_study(preset, "CT-0", 3, site)
            far = ~ndimage.binary_dilation(study.labels != TISSUE["air"], iterations=3)
            air = study.image[far & (study.image > -1500)].astype(np.float64)
            expected = site.noise_at(float(np.prod(study.spacing)))
            assert 0.6 * expected <= air.std() <= 1.6 * expected, (preset, noise_hu)


def test_sites_labeled_scans_and_findings(tiny_dataset: Path, rows: list[dict[str, str]]) -> None:
    """Studies are spread over the preset's sites, every labeled one from site 0; non-COVID
    findings are recorded (and are no lesion); lesion types are 1 (ground glass) or 2."""
    sites = {int(r["site"]) for r in rows}
    assert sites == set(range(TINY.n_sites))
    assert {int(r["site"]) for r in rows if r["labeled"] == "1"} == {0}
    assert any(r["findings"] for r in rows if r["category"] == "CT-0")
    for row in rows:
        truth = np.asanyarray(
            nib.load(tiny_dataset / "truth" / f"{row['study_id']}_mask.nii.gz").dataobj
        )
        types = np.asanyarray(
            nib.load(tiny_dataset / "lesion_types" / f"{row['study_id']}_types.nii.gz").dataobj
        )
        assert set(np.unique(types)) <= {0, 1, 2}
        assert np.array_equal(types > 0, truth > 0)


def test_anatomy_orientation_in_world(tissue_studies: list) -> None:
    """Table behind the back, spine posterior to the lungs, lungs on both sides of midline."""
    study = tissue_studies[0]
    table_xyz = nib.affines.apply_affine(study.affine, np.argwhere(study.labels == TISSUE["table"]))
    lungs_xyz = nib.affines.apply_affine(study.affine, np.argwhere(study.lungs))
    assert table_xyz[:, 1].max() < lungs_xyz[:, 1].min()
    x_mid = np.median(lungs_xyz[:, 0])
    # bone: above the contrast-enhanced blood (at most 280 HU)
    bone_xyz = nib.affines.apply_affine(study.affine, np.argwhere(study.image > 300))
    midline = bone_xyz[np.abs(bone_xyz[:, 0] - x_mid) < 12.0]  # spine (and sternum)
    y_lungs = np.median(lungs_xyz[:, 1])
    assert (midline[:, 1] < y_lungs).sum() > 1.5 * (midline[:, 1] >= y_lungs).sum()
    assert (lungs_xyz[:, 0] > x_mid + 30).sum() > 0.3 * len(lungs_xyz)
    assert (lungs_xyz[:, 0] < x_mid - 30).sum() > 0.3 * len(lungs_xyz)


@pytest.mark.parametrize("category", layout.CATEGORIES)
def test_category_matches_true_involvement(category: str) -> None:
    study = synthesize_study(TINY, category, 101)
    inside = (study.lesion & study.lungs).sum() / study.lungs.sum() * 100.0
    assert study.involvement_pct == pytest.approx(inside)
    assert f"CT-{grade_from_involvement(study.involvement_pct)}" == category


# --- determinism and CLI --------------------------------------------------------------------


def test_study_deterministic_by_seed() -> None:
    a, b, c = (synthesize_study(TINY, "CT-1", s) for s in (7, 7, 8))
    for field in ("image", "lesion", "lungs", "labels", "affine"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.image, c.image)


def _assert_same_files(a: Path, b: Path) -> None:
    """``a`` and ``b`` hold the same files, byte for byte."""
    files = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_cli_writes_same_dataset_and_refuses_existing(
    tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cli"  # made in this process; the fixture's in a pool of workers
    args = ["synth", "--preset", "tiny", "--out", str(out), "--seed", "0", "--workers", "0"]
    assert main(args) == 0
    _assert_same_files(out, tiny_dataset)
    capsys.readouterr()
    assert main(["synth", "--preset", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and str(out) in err


def test_sites_reconstruct_at_their_own_voxel_size(tmp_path: Path) -> None:
    """A preset with ``site_voxels``: each site's scans have its voxels over the same field
    of view, with lungs and lesions of the same physical size, and the truth on their grid."""
    preset = replace(TINY, name="tiny-voxels", site_voxels=((5.5, 5.5, 18.0), (2.75, 2.75, 6.0)))
    assert preset.grid(None) == ((64, 64, 16), (5.5, 5.5, 18.0), 3)  # 18 mm: 3 sub-slices
    assert preset.grid((2.75, 2.75, 6.0)) == ((128, 128, 48), (2.75, 2.75, 6.0), 1)
    out = synthesize_dataset(tmp_path / "d", preset, seed=0, workers=0)
    info = json.loads((out / SYNTH_JSON).read_text())
    assert [s["voxel_mm"] for s in info["sites"]] == [[5.5, 5.5, 18.0], [2.75, 2.75, 6.0]]
    expected = {"0": ((64, 64, 16), (5.5, 5.5, 18.0)), "1": ((128, 128, 48), (2.75, 2.75, 6.0))}
    lung_ml: dict[str, list[float]] = {}
    field_of_view = set()
    for row in _manifest(out):
        shape, spacing = expected[row["site"]]
        files = _study_files(out, row)
        files["types"] = layout.truth_types_path(out, row["study_id"])
        image, affine, _ = _load(files["image"])
        assert image.shape == shape and np.allclose(spacing_from_affine(affine), spacing)
        for name in ("lungs", "truth", "types"):
            data, other_affine, _ = _load(files[name])
            assert data.shape == shape and np.array_equal(other_affine, affine), name
        # the outer corners of the first and last voxels: the same box in the world
        corners = affine @ np.array([[-0.5, -0.5, -0.5, 1.0], [*(np.array(shape) - 0.5), 1.0]]).T
        field_of_view.add(tuple(np.round(corners[:3].ravel(), 3)))
        lung_ml.setdefault(row["site"], []).append(float(row["lung_ml"]))
    assert len(field_of_view) == 1, field_of_view
    assert set(lung_ml) == {"0", "1"}
    # same anatomy model at either voxel size: lung volumes of one population
    ratio = np.median(lung_ml["1"]) / np.median(lung_ml["0"])
    assert 0.7 < ratio < 1.4, lung_ml


def test_cli_voxels_per_site_and_bad_voxels(tmp_path: Path, capsys) -> None:
    out, serial = tmp_path / "v", tmp_path / "v0"
    args = ["synth", "--preset", "tiny", "--voxels", "11,11,18;5.5,5.5,9"]
    assert main(args + ["--out", str(out), "--workers", "2"]) == 0
    assert main(args + ["--out", str(serial), "--workers", "0"]) == 0
    _assert_same_files(out, serial)
    info = json.loads((out / SYNTH_JSON).read_text())
    assert info["params"]["site_voxels"] == [[11.0, 11.0, 18.0], [5.5, 5.5, 9.0]]
    shapes = {
        row["site"]: _load(_study_files(out, row)["image"])[0].shape for row in _manifest(out)
    }
    assert shapes == {"0": (32, 32, 16), "1": (64, 64, 32)}
    capsys.readouterr()
    for bad in ("1,1", "1,1,0", "a,b,c", "1,1,1;", "0.1,0.1,0.1"):
        bad_out = tmp_path / "bad"
        argv = ["synth", "--preset", "tiny", "--out", str(bad_out), "--voxels", bad]
        assert main(argv) == 2, bad
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--voxels" in err, (bad, err)
        assert not bad_out.exists(), bad
    for extra, flag in (
        (["--voxels", "5,5,5;6,6,6;7,7,7"], "--voxels"),  # tiny has 2 sites
        (["--workers", "-1"], "--workers"),
        (["--paint", str(out / "studies"), "--voxels", "1,1,1"], "--voxels"),
        (["--paint", str(out / "studies"), "--workers", "2"], "--workers"),
    ):
        assert main(["synth", "--preset", "tiny", "--out", str(bad_out), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and not bad_out.exists(), (extra, err)


def _small_preset(studies_per_category: int) -> SynthPreset:
    """A preset of a few CT-0 and CT-1 studies on a 32 x 32 x 8 grid (fast)."""
    n = studies_per_category
    return SynthPreset(
        name="small",
        shape=(32, 32, 8),
        spacing=(11.0, 11.0, 36.0),
        counts={"CT-0": n, "CT-1": n},
        n_labeled=1,
    )


def test_overwrite_replaces_old_dataset(tmp_path: Path) -> None:
    small = _small_preset(studies_per_category=1)
    stale = tmp_path / layout.TRUTH_DIR / "study_0099_mask.nii.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    with pytest.raises(InputError, match="already contains a dataset"):
        synthesize_dataset(tmp_path, preset=small, seed=1)
    synthesize_dataset(tmp_path, preset=small, seed=1, overwrite=True)
    assert not stale.exists()
    assert [r["study_id"] for r in _manifest(tmp_path)] == ["study_0001", "study_0002"]
    assert layout.mask_path(tmp_path, "study_0002").exists()


@pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork",
    reason="the patched function reaches the workers only when they are forked",
)
def test_failed_study_in_a_worker_leaves_the_old_dataset(tmp_path: Path, monkeypatch) -> None:
    """A study that fails in a worker process stops the dataset: the one already in the
    folder stays as it was and no staging folder is left behind."""
    import volseg.data.synth as synth

    small = _small_preset(studies_per_category=2)
    synthesize_dataset(tmp_path, preset=small, seed=1, workers=0)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    make = synth.synthesize_study

    def failing(preset, category, seed, site=None):
        if category == "CT-1":
            raise RuntimeError("disk on fire")
        return make(preset, category, seed, site)

    monkeypatch.setattr(synth, "synthesize_study", failing)  # inherited by forked workers
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesize_dataset(tmp_path, preset=small, seed=2, overwrite=True, workers=2)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synth-")]


def test_voxels_too_fine_for_the_memory_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    import volseg.data.workers as workers

    monkeypatch.setattr(workers, "available_memory_bytes", lambda: 2e9)
    out = tmp_path / "fine"
    argv = ["synth", "--preset", "tiny", "--out", str(out), "--voxels", "0.5,0.5,0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GB of memory" in err and "larger voxels" in err
    assert not out.exists()


def test_unknown_preset_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown synth preset"):
        synthesize_dataset(tmp_path, preset="huge")
