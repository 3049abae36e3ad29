"""Inference geometry and bundles: outputs land on the input's exact grid."""

from __future__ import annotations

import json
import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.oracle import OracleNet
from volseg.bundle import load_bundle, save_bundle
from volseg.errors import InputError
from volseg.geometry import WorkingGrid, body_bbox, window_hu
from volseg.inference.postprocess import keep_components, lesion_region
from volseg.models import registry
from volseg.recipe import Recipe


@pytest.fixture()
def oracle_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    return save_bundle(
        tmp_path / "run" / "finetune" / "model.pt",
        OracleNet(),
        "oracle",
        {"level": 0.6},
        Recipe((1.5, 1.5, 5.0), (-1000, 400), (16, 16, 8)),
        {"overlap": 0.25, "min_component_mm3": 0},
    )


def _affine(kind: str, spacing=(0.7, 0.7, 8.0)) -> np.ndarray:
    aff = np.eye(4)
    sx, sy, sz = spacing
    if kind == "LAS":
        aff[:3, :3] = np.diag([-sx, sy, sz])
    elif kind == "RAS":
        aff[:3, :3] = np.diag([sx, sy, sz])
    elif kind == "oblique":
        c, s = np.cos(0.35), np.sin(0.35)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        aff[:3, :3] = rot @ np.diag([-sx, sy, sz])
    elif kind == "permuted":  # axes stored as (S, R, P)
        aff[:3, :3] = np.array([[0, sy, 0], [0, 0, -sx], [sz, 0, 0]])
    aff[:3, 3] = [12.5, -40.0, 7.0]
    return aff


@pytest.mark.parametrize("kind", ["LAS", "RAS", "oblique", "permuted"])
def test_working_grid_round_trip_is_exact_at_native_spacing(kind: str) -> None:
    aff = _affine(kind)
    native_spacing = np.linalg.norm(aff[:3, :3], axis=0)
    grid = WorkingGrid.plan(
        aff,
        (30, 26, 9),
        tuple(native_spacing[np.argsort(nib.orientations.io_orientation(aff)[:, 0])]),
    )
    vol = torch.rand(1, 1, 30, 26, 9, dtype=torch.float64)
    back = grid.to_native(grid.to_working(vol))
    assert torch.equal(back, vol)
    # a voxel's world position is the same on both grids
    working = grid.to_working(vol)
    j = np.unravel_index(int(working.argmax()), grid.shape)
    i = np.unravel_index(int(vol.argmax()), vol.shape[2:])
    np.testing.assert_allclose(grid.affine @ [*j, 1], aff @ [*i, 1], atol=1e-9)
    assert nib.aff2axcodes(grid.affine) == ("R", "A", "S")


@pytest.mark.parametrize("kind", ["LAS", "RAS", "oblique", "permuted"])
def test_predict_paints_lesion_back_at_its_voxel(
    kind: str, oracle_bundle: Path, tmp_path: Path
) -> None:
    """A bright blob painted at a known native voxel comes back there, on the input's grid."""
    from volseg.stages.predict import run_predict

    shape = (48, 40, 12) if kind != "permuted" else (12, 48, 40)
    aff = _affine(kind)
    hu = np.full(shape, -850, dtype=np.int16)
    centre = (20, 17, 6) if kind != "permuted" else (6, 20, 17)
    blob = np.zeros(shape, dtype=bool)
    sl = tuple(
        slice(c - r, c + r + 1)
        for c, r in zip(centre, (4, 4, 1) if kind != "permuted" else (1, 4, 4), strict=True)
    )
    blob[sl] = True
    hu[blob] = 200
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, aff), src)
    before = src.read_bytes()
    out = tmp_path / "out"
    run_predict(oracle_bundle.parents[1], src, out, use_lungs=False)
    img = nib.load(out / "scan_a_mask.nii.gz")
    mask = np.asarray(img.dataobj)
    assert mask.dtype == np.uint8 and mask.shape == shape
    assert np.array_equal(img.affine, nib.load(src).affine)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(aff)
    assert mask[centre] == 1
    dice = 2 * (mask.astype(bool) & blob).sum() / (mask.sum() + blob.sum())
    assert dice > 0.7
    assert src.read_bytes() == before  # input untouched
    info = json.loads((out / "scan_a.json").read_text())
    voxel_ml = float(abs(np.linalg.det(aff[:3, :3]))) / 1000.0
    assert info["lesion_volume_ml"] == pytest.approx(mask.sum() * voxel_ml)
    assert info["lung_volume_ml"] is None and info["ct_grade"] is None  # no lungs: no grade


def test_bundle_round_trip_and_bad_bundles(oracle_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(oracle_bundle.parents[1])  # a run directory resolves to finetune/model.pt
    assert bundle.model_name == "oracle" and bundle.recipe.spacing == (1.5, 1.5, 5.0)
    payload = torch.load(oracle_bundle, weights_only=True)
    payload["format_version"] = 99
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(InputError, match="format version 99"):
        load_bundle(bad)
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    with pytest.raises(InputError, match="no model bundle"):
        load_bundle(empty_run)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable"):
        load_bundle(junk)


def test_shard_covers_every_file_once() -> None:
    from volseg.stages.predict import shard

    items = list(range(17))
    parts = [shard(items, 4, i) for i in range(4)]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(InputError):
        shard(items, 2, 2)


def test_non_3d_input_refused_before_outputs(oracle_bundle: Path, tmp_path: Path) -> None:
    from volseg.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), folder / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), folder / "b.nii.gz")
    out = tmp_path / "out"
    rc = main(["predict", "-m", str(oracle_bundle), "-i", str(folder), "-o", str(out)])
    assert rc == 2
    assert not out.exists() or not any(out.iterdir())


def test_dicom_series_input(oracle_bundle: Path, tmp_path: Path) -> None:
    from tests.dicom_series import write_ct_series
    from volseg.inference.scans import discover_scans, load_scan

    arr = np.full((6, 20, 24), -850, dtype=np.int16)  # (z, y, x)
    arr[3, 8:12, 10:14] = 300
    folder = tmp_path / "dicom"
    write_ct_series(folder, arr, spacing=(0.8, 0.8, 5.0), origin=(-10.0, 20.0, 30.0))
    before = locale.setlocale(locale.LC_ALL)
    sources = discover_scans(folder)
    assert len(sources) == 1
    scan = load_scan(sources[0])
    assert locale.setlocale(locale.LC_ALL) == before  # GDCM's locale change is undone
    assert scan.array.shape == (24, 20, 6)
    # LPS origin (-10, 20, 30) is RAS (10, -20, 30); x spacing flips sign into RAS
    np.testing.assert_allclose(scan.affine[:3, 3], [10.0, -20.0, 30.0], atol=1e-4)
    assert nib.aff2axcodes(scan.affine) == ("L", "P", "S")
    assert scan.array[12, 10, 3] == 300


def test_lesion_presence_gate_empties_small_predictions(
    oracle_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lesions filling 0.5 % of the lungs survive no gate and a 0.4 % gate, not a 1 % one;
    what a gate emptied is reported (JSON, summary.csv, one warning)."""
    import csv
    import json
    import logging

    from volseg.stages.predict import run_predict

    shape = (40, 40, 10)
    aff = np.diag([1.5, 1.5, 5.0, 1.0])
    hu = np.full(shape, -850, dtype=np.int16)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[:, :, :] = 1  # 16000 lung voxels
    hu[10:14, 10:14, 4:9] = 200  # 80 lesion voxels = 0.5 %
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, aff), src)
    nib.save(nib.Nifti1Image(lungs, aff), tmp_path / "in" / "scan_a_lungs.nii.gz")

    def predicted(**gate) -> tuple[int, bool, float | None]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        run_predict(oracle_bundle.parents[1], src, out, lungs=tmp_path / "in", **gate)
        info = json.loads((out / "scan_a.json").read_text())
        mask = np.asarray(nib.load(out / "scan_a_mask.nii.gz").dataobj)
        assert info["options"]["min_involvement_pct"] == gate.get("min_involvement_pct", 0.0)
        row = next(csv.DictReader((out / "summary.csv").open()))
        assert row["gated"] == str(info["gated"])
        assert row["gated_involvement_pct"] == str(info["gated_involvement_pct"] or "")
        return int(mask.sum()), info["gated"], info["gated_involvement_pct"]

    with caplog.at_level(logging.WARNING, logger="volseg.stages.predict"):
        assert predicted() == (80, False, None)  # the bundle has no gate
        assert predicted(min_involvement_pct=0.4) == (80, False, None)
        assert not [r for r in caplog.records if "lesion-presence gate" in r.getMessage()]
        assert predicted(min_involvement_pct=1.0) == (0, True, 0.5)  # 80 of 16000 voxels
    (warning,) = [
        r.getMessage() for r in caplog.records if "lesion-presence gate" in r.getMessage()
    ]
    assert "1 of 1 scan(s)" in warning and "scan_a" in warning and "--min-involvement 0" in warning
    assert "(1 % of the lungs)" in warning


def test_no_lungs_turns_the_gate_off_with_one_warning(
    oracle_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The gate is a share of the lung volume: under ``--no-lungs`` it is not applied, the
    run says so once (not once per scan) and each JSON records the gate as 0."""
    import json
    import logging

    from volseg.stages.predict import run_predict

    hu = np.full((40, 40, 10), -850, dtype=np.int16)
    hu[10:14, 10:14, 4:9] = 200
    srcs = []
    for name in ("scan_a", "scan_b"):
        srcs.append(tmp_path / "in" / f"{name}.nii.gz")
        srcs[-1].parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 5.0, 1.0])), srcs[-1])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        run_predict(oracle_bundle.parents[1], srcs, out, use_lungs=False, min_involvement_pct=1.0)
    warnings = [r.getMessage() for r in caplog.records if "lesion-presence gate" in r.getMessage()]
    assert len(warnings) == 1 and "--no-lungs" in warnings[0] and "not applied" in warnings[0]
    for name in ("scan_a", "scan_b"):
        info = json.loads((out / f"{name}.json").read_text())
        assert info["options"]["min_involvement_pct"] == 0.0 and info["gated"] is False
        assert np.asarray(nib.load(out / f"{name}_mask.nii.gz").dataobj).sum() == 80


def test_predict_reports_each_lung_volume(oracle_bundle: Path, tmp_path: Path) -> None:
    """The JSON and summary.csv carry right and left lung volume (mL) with the lung QC:
    computed lungs land within 10 % of the phantom's true lungs; a given mask is split at
    the middle of its right-left extent exactly."""
    import csv
    import json

    from tests.chest_phantom import chest_phantom
    from volseg.stages.predict import run_predict

    hu, truth, _ = chest_phantom()
    aff = np.diag([-1.4, -1.4, 8.0, 1.0])  # LPS storage: array x runs to the patient's left
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), aff), src)
    voxel_ml = 1.4 * 1.4 * 8.0 / 1000.0
    half = truth.shape[0] // 2  # phantom lungs are symmetric about the array's middle
    true_right = truth[:half].sum() * voxel_ml  # x index < half: patient's right (LPS)
    true_left = truth[half:].sum() * voxel_ml

    # margin 0: the oracle's "lesions" (all tissue above -160 HU) stay out of the lungs
    run_predict(oracle_bundle.parents[1], src, tmp_path / "out", lung_margin_mm=0)
    info = json.loads((tmp_path / "out" / "scan_a.json").read_text())
    assert abs(info["right_lung_ml"] - true_right) < 0.1 * true_right
    assert abs(info["left_lung_ml"] - true_left) < 0.1 * true_left
    assert abs(info["right_lung_ml"] + info["left_lung_ml"] - info["lung_volume_ml"]) < 0.2
    assert info["lungs_cut_by_fov"] == ["top"]  # the phantom's apices leave the field of view
    assert [w for w in info["lung_warnings"] if "cut by the field of view" not in w] == []
    row = next(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert float(row["right_lung_ml"]) == pytest.approx(info["right_lung_ml"])

    nib.save(nib.Nifti1Image(truth.astype(np.uint8), aff), tmp_path / "in" / "scan_a_lungs.nii.gz")
    run_predict(
        oracle_bundle.parents[1], src, tmp_path / "given", lungs=tmp_path / "in", lung_margin_mm=0
    )
    info = json.loads((tmp_path / "given" / "scan_a.json").read_text())
    assert info["right_lung_ml"] == pytest.approx(true_right, abs=0.05)
    assert info["left_lung_ml"] == pytest.approx(true_left, abs=0.05)


def test_predict_warns_when_one_lung_is_missing(
    oracle_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A given lung mask with the left lung erased: a warning line and the QC list say so."""
    import json

    from tests.chest_phantom import chest_phantom
    from volseg.stages.predict import run_predict

    hu, truth, _ = chest_phantom()
    aff = np.diag([-1.4, -1.4, 8.0, 1.0])
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), aff), src)
    one = truth.copy()
    one[truth.shape[0] // 2 :] = False  # only the right lung (array x < middle in LPS)
    nib.save(nib.Nifti1Image(one.astype(np.uint8), aff), tmp_path / "in" / "scan_a_lungs.nii.gz")
    run_predict(
        oracle_bundle.parents[1], src, tmp_path / "out", lungs=tmp_path / "in", lung_margin_mm=0
    )
    info = json.loads((tmp_path / "out" / "scan_a.json").read_text())
    assert any("lung not found" in w or "below" in w for w in info["lung_warnings"])
    assert any("scan_a" in r.message and "lung" in r.message for r in caplog.records)


def test_lesion_at_the_pleura_is_kept_within_the_lung_margin(
    oracle_bundle: Path, tmp_path: Path
) -> None:
    """Consolidation just outside the given lung mask (as at the chest wall) is kept up to
    ``lung_margin_mm`` from the mask and counted as lung; a blob not touching the lungs is
    dropped; involvement = lesion / (lung mask + lesion), hand-computed."""
    import json

    from volseg.stages.predict import run_predict

    shape = (60, 40, 10)
    spacing = (1.5, 1.5, 5.0)
    aff = np.diag([*spacing, 1.0])
    hu = np.full(shape, -850, dtype=np.int16)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[10:30, 5:35, :] = 1  # 20 x 30 x 10 = 6000 voxels
    hu[30:40, 10:20, 2:8] = 40  # touches the lungs at x = 29 | 30, reaches 15 mm out
    hu[50:56, 10:20, 2:8] = 40  # 31 mm from the lungs, never touching them
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, aff), src)
    nib.save(nib.Nifti1Image(lungs, aff), tmp_path / "in" / "scan_a_lungs.nii.gz")

    def run(margin: float) -> tuple[np.ndarray, dict]:
        out = tmp_path / f"out{margin:g}"
        run_predict(
            oracle_bundle.parents[1], src, out, lungs=tmp_path / "in", lung_margin_mm=margin
        )
        mask = np.asarray(nib.load(out / "scan_a_mask.nii.gz").dataobj)
        return mask, json.loads((out / "scan_a.json").read_text())

    mask, info = run(0)
    assert mask.sum() == 0 and info["lung_volume_ml"] == pytest.approx(6000 * 11.25e-3)
    mask, info = run(10)  # within 10 mm of x = 29: x = 30..35 (6 voxels of 1.5 mm)
    assert mask[30:36, 10:20, 2:8].all() and mask.sum() == 6 * 10 * 6
    assert info["involvement_pct"] == pytest.approx(100 * 360 / 6360)
    assert info["lung_volume_ml"] == pytest.approx(6360 * 11.25e-3)
    assert info["right_lung_ml"] + info["left_lung_ml"] == pytest.approx(
        info["lung_volume_ml"], abs=0.1
    )
    mask, _ = run(40)  # the whole touching blob; the far one still dropped
    assert mask[30:40, 10:20, 2:8].all() and mask.sum() == 600


def test_predict_splits_ground_glass_and_consolidation_per_lung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ground-glass blob (-500 HU) in the right lung and a consolidation (+30 HU) in the
    left: the JSON, summary.csv and the type map report each in its lung, by hand."""
    import csv
    import json

    from volseg.stages.predict import run_predict

    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    bundle = save_bundle(
        tmp_path / "run" / "finetune" / "model.pt",
        OracleNet(0.2),  # windowed 0.2 = -720 HU: both blobs, not the lung
        "oracle",
        {"level": 0.2},
        Recipe((1.5, 1.5, 5.0), (-1000, 400), (16, 16, 8)),
        {"overlap": 0.25, "min_component_mm3": 0},
    )
    shape = (60, 40, 12)
    aff = np.diag([1.5, 1.5, 5.0, 1.0])  # RAS+: world x, and array x, run to the right
    hu = np.full(shape, 40, dtype=np.int16)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[35:55, 5:35, 1:11] = 1  # right lung, 6000 voxels
    lungs[5:25, 5:35, 1:11] = 1  # left lung, 6000 voxels
    hu[lungs > 0] = -850
    hu[40:45, 10:15, 4:8] = -500  # 100 voxels of ground glass, right
    hu[10:15, 10:15, 4:8] = 30  # 100 voxels of consolidation, left
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, aff), src)
    nib.save(nib.Nifti1Image(lungs, aff), tmp_path / "in" / "scan_a_lungs.nii.gz")
    out = tmp_path / "out"
    run_predict(
        bundle.parents[1], src, out, lungs=tmp_path / "in", lung_margin_mm=0, write_types=True
    )
    info = json.loads((out / "scan_a.json").read_text())
    ml = 100 * 1.5 * 1.5 * 5.0 / 1000.0
    assert info["ggo_ml"] == pytest.approx(ml) and info["consolidation_ml"] == pytest.approx(ml)
    assert info["ggo_pct"] == pytest.approx(100 * 100 / 12000)
    right, left = info["by_side"]["right"], info["by_side"]["left"]
    assert right["ggo_ml"] == pytest.approx(ml, abs=0.01) and right["consolidation_ml"] == 0
    assert left["consolidation_ml"] == pytest.approx(ml, abs=0.01) and left["ggo_ml"] == 0
    assert left["consolidation_pct"] == pytest.approx(100 * 100 / 6000, abs=1e-3)
    types = np.asarray(nib.load(out / "scan_a_types.nii.gz").dataobj)
    assert (types == 1).sum() == 100 and (types == 2).sum() == 100
    assert (types[10:15, 10:15, 4:8] == 2).all()
    row = next(csv.DictReader((out / "summary.csv").open()))
    assert float(row["consolidation_ml"]) == pytest.approx(ml)


def test_flip_disagreement_by_hand() -> None:
    """1 - |every flip| / |some flip|: 4 voxels certain, 4 more seen by some flips -> 0.5."""
    from volseg.inference.predictor import FlipProbabilities, PredictOptions, flip_disagreement
    from volseg.recipe import Recipe as R

    low = np.zeros((10, 10, 4), np.float32)
    high = np.zeros_like(low)
    low[2:4, 2:4, 1] = 0.9  # every flip: 4 voxels
    high[2:4, 2:6, 1] = 0.9  # some flip: 8 voxels
    opts = PredictOptions.resolve(R((1, 1, 1), (-1000, 400), (8, 8, 8)), {"min_component_mm3": 0})
    flips = FlipProbabilities((low + high) / 2, low, high)
    assert flip_disagreement(flips, None, (1.0, 1.0, 1.0), opts) == pytest.approx(0.5)
    empty = FlipProbabilities(low * 0, low * 0, low * 0)
    assert flip_disagreement(empty, None, (1.0, 1.0, 1.0), opts) == 0.0


def test_predict_uncertainty_outputs(oracle_bundle: Path, tmp_path: Path) -> None:
    """--uncertainty writes the spread map and the score; the oracle is flip-symmetric, so
    its flips agree (score 0, no review) unless the review threshold is 0."""
    import json

    from volseg.stages.predict import run_predict

    shape = (40, 40, 10)
    hu = np.full(shape, -850, dtype=np.int16)
    hu[10:16, 10:16, 3:7] = 200
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 5.0, 1.0])), src)
    for name, threshold in (("agree", 0.5), ("always", 0.0)):
        out = tmp_path / name
        run_predict(
            oracle_bundle.parents[1],
            src,
            out,
            use_lungs=False,
            uncertainty=True,
            review_disagreement=threshold,
        )
        info = json.loads((out / "scan_a.json").read_text())
        spread = np.asarray(nib.load(out / "scan_a_uncertainty.nii.gz").dataobj)
        assert spread.shape == shape and float(spread.max()) < 1e-4
        assert info["uncertainty_score"] == 0.0
        assert info["needs_review"] is (threshold == 0.0)


def test_predict_writes_a_dicom_seg_in_the_series_geometry(
    oracle_bundle: Path, tmp_path: Path, capfd
) -> None:
    """--output-type both on a DICOM series: the SEG references every source slice and its
    frames hold the lesion exactly where the source pixels are bright; with --types, two
    segments (ground glass, consolidation); a NIfTI input is refused in one line."""
    import highdicom as hd

    from tests.dicom_series import write_ct_series
    from volseg.cli import main
    from volseg.stages.predict import run_predict

    hu = np.full((6, 20, 24), -850, dtype=np.int16)  # (z, y, x)
    hu[3, 8:12, 10:14] = 300
    hu[1, 2:5, 15:20] = 250
    write_ct_series(tmp_path / "dcm", hu)
    out = tmp_path / "out"
    run_predict(
        oracle_bundle.parents[1], tmp_path / "dcm", out, use_lungs=False, output_type="both"
    )
    seg = hd.seg.segread(str(out / "dcm_seg.dcm"))
    assert (out / "dcm_mask.nii.gz").is_file()
    mask = np.asarray(nib.load(out / "dcm_mask.nii.gz").dataobj)  # (x, y, z) of the series
    assert mask[:, :, 3].any() and mask[:, :, 1].any()
    sources = {str(ds.SOPInstanceUID): ds for ds in _read_dir(tmp_path / "dcm")}
    assert {str(r.ReferencedSOPInstanceUID) for r in _referenced(seg)} == set(sources)
    for uid, ds in sources.items():
        frame = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=[1]
        )[0, :, :, 0]
        k = int(ds.InstanceNumber) - 1  # slice k at z = 30 + 5 k mm
        assert np.array_equal(frame > 0, mask[:, :, k].T > 0), k  # rows y, columns x
    assert seg.SegmentSequence[0].SegmentLabel == "COVID-19 lesion"
    _assert_valid_dicom(out / "dcm_seg.dcm")

    run_predict(
        oracle_bundle.parents[1],
        tmp_path / "dcm",
        tmp_path / "typed",
        use_lungs=False,
        output_type="dicom-seg",
        write_types=True,
    )
    typed = hd.seg.segread(str(tmp_path / "typed" / "dcm_seg.dcm"))
    labels = [s.SegmentLabel for s in typed.SegmentSequence]
    assert labels == ["Ground-glass opacity", "Consolidation"]
    assert not (tmp_path / "typed" / "dcm_mask.nii.gz").exists()

    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu.T.copy(), np.eye(4)), nifti)
    code = main(
        [
            "predict",
            "-m",
            str(oracle_bundle),
            "-i",
            str(nifti),
            "-o",
            str(tmp_path / "n"),
            "--output-type",
            "dicom-seg",
        ]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and "needs a DICOM series" in err[-1] and not (tmp_path / "n").exists()


def _assert_valid_dicom(path: Path) -> None:
    """dciodvfy (Debian's dicom3tools) finds no error, where it is installed."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        return
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if "Error" in line]
    assert errors == [], errors


def _read_dir(folder: Path) -> list:
    import pydicom

    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def _referenced(seg) -> list:
    return [
        item
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    ]


@pytest.mark.parametrize("kind", ["LAS", "RAS", "permuted"])
def test_resampled_prediction_lands_on_its_voxels(
    kind: str, oracle_bundle: Path, tmp_path: Path
) -> None:
    """Native 0.7 x 0.7 x 8 mm, working grid 1.5 x 1.5 x 5 mm: a smooth bright blob far
    from the centre comes back centred within 0.35 native voxels in-plane (0.25 mm) and
    0.15 slices. A one-voxel shift on the working grid (2 native voxels in-plane) or
    corner-aligned resizing (about a voxel off this far from the centre) fails it. (A
    hard-edged block would not do: thresholding its resampled edges moves each edge by up
    to half a working voxel whatever the registration.)"""
    from volseg.stages.predict import run_predict

    aff = _affine(kind)
    shape = (120, 100, 16) if kind != "permuted" else (16, 120, 100)
    index = np.indices(shape).reshape(3, -1).T
    world = index @ aff[:3, :3].T + aff[:3, 3]
    centre = np.array([95, 25, 11] if kind != "permuted" else [11, 95, 25])
    c_world = aff[:3, :3] @ centre + aff[:3, 3]
    d = (world - c_world) / np.array([6.0, 6.0, 14.0])  # mm, the blob's axes in RAS
    bump = np.exp(-0.5 * (d**2).sum(axis=1)).reshape(shape)
    hu = np.rint(-850 + 1250 * bump).astype(np.int16)
    truth = hu > -160  # where the oracle's windowed level 0.6 lies on the native grid
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, aff), src)
    run_predict(oracle_bundle.parents[1], src, tmp_path / "out", use_lungs=False)
    mask = np.asarray(nib.load(tmp_path / "out" / "scan_a_mask.nii.gz").dataobj) > 0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.85
    shift = np.argwhere(mask).mean(axis=0) - np.argwhere(truth).mean(axis=0)
    slice_axis = 2 if kind != "permuted" else 0
    for axis, offset in enumerate(shift):
        assert abs(offset) < (0.15 if axis == slice_axis else 0.35), (axis, shift)


@pytest.mark.parametrize("kind", ["LAS", "RAS", "oblique", "permuted"])
def test_working_grid_samples_the_world_its_affine_names(kind: str) -> None:
    """Resampled to 1.5 x 1.5 x 5 mm, each working voxel holds the native volume's value at
    the world point the working affine gives it (trilinear, checked with scipy away from
    the edges). Corner-aligned resizing or an off-by-one origin fails this even where a
    round trip back to the native grid would hide it."""
    from scipy import ndimage as ndi

    aff = _affine(kind)
    shape = (60, 50, 12) if kind != "permuted" else (12, 60, 50)
    rng = np.random.default_rng(0)
    native = ndi.gaussian_filter(rng.normal(size=shape), 2.0).astype(np.float64)
    grid = WorkingGrid.plan(aff, shape, (1.5, 1.5, 5.0))
    working = grid.to_working(torch.as_tensor(native)[None, None])[0, 0].numpy()
    index = np.indices(working.shape).reshape(3, -1)
    to_native = np.linalg.inv(aff) @ grid.affine
    coords = to_native[:3, :3] @ index + to_native[:3, 3:4]
    expected = ndi.map_coordinates(native, coords, order=1, mode="nearest").reshape(working.shape)
    inside = np.all((coords >= 1) & (coords <= np.asarray(shape)[:, None] - 2), axis=0).reshape(
        working.shape
    )
    assert inside.sum() > 0.3 * inside.size
    np.testing.assert_allclose(working[inside], expected[inside], atol=0.02 * native.std())


def test_overlays_outline_the_reference_when_given(oracle_bundle: Path, tmp_path: Path) -> None:
    """predict --overlays --ref: the reference's dashed yellow outline (and its legend
    entry) adds yellow pixels to the PNG; a reference on another grid is refused."""
    import matplotlib.image as mpimg

    from volseg.stages.predict import run_predict

    shape = (40, 40, 10)
    aff = np.diag([1.5, 1.5, 5.0, 1.0])
    hu = np.full(shape, -850, dtype=np.int16)
    hu[10:20, 10:20, 3:7] = 200
    ref = np.zeros(shape, np.uint8)
    ref[22:32, 22:32, 3:7] = 1  # elsewhere, so its outline is not hidden under the lesion's
    (tmp_path / "in").mkdir()
    (tmp_path / "ref").mkdir()
    nib.save(nib.Nifti1Image(hu, aff), tmp_path / "in" / "scan_a.nii.gz")
    nib.save(nib.Nifti1Image(ref, aff), tmp_path / "ref" / "scan_a_mask.nii.gz")

    def yellow(reference: Path | None) -> int:
        out = tmp_path / ("with" if reference else "without")
        run_predict(
            oracle_bundle.parents[1],
            tmp_path / "in" / "scan_a.nii.gz",
            out,
            use_lungs=False,
            overlays=True,
            reference=reference,
        )
        pngs = sorted((out / "overlays" / "scan_a").glob("*.png"))
        assert pngs
        rgb = mpimg.imread(pngs[0])[..., :3]
        return int(((rgb[..., 0] > 0.8) & (rgb[..., 1] > 0.8) & (rgb[..., 2] < 0.3)).sum())

    assert yellow(tmp_path / "ref") > yellow(None) + 20
    nib.save(nib.Nifti1Image(ref[:30], aff), tmp_path / "ref" / "scan_a_mask.nii.gz")
    with pytest.raises(InputError, match="reference mask geometry"):
        yellow(tmp_path / "ref")


def test_overlay_slices_show_lesion_first_else_the_lungs() -> None:
    """With lesion: its slices, most lesion first, at most max_slices. Without: three slices
    a quarter, half and three quarters through the lungs' extent (lung in slices 20..39 of
    60: 24.75, 29.5, 34.25 rounded), never the lung-free abdomen; without lungs, the same
    through the volume (14.75, 29.5, 44.25)."""
    from volseg.inference.overlays import overlay_slices

    lesion = np.zeros((8, 8, 60), np.uint8)
    lung = np.zeros_like(lesion)
    lung[2:6, 2:6, 20:40] = 1
    assert overlay_slices(lesion, lung, 6) == [25, 30, 34]
    assert overlay_slices(lesion, None, 6) == [15, 30, 44]
    lesion[3, 3, 33] = 1
    lesion[3:5, 3, 21] = 1
    lesion[3:6, 3, 37] = 1
    assert overlay_slices(lesion, lung, 6) == [37, 21, 33]
    assert overlay_slices(lesion, lung, 2) == [37, 21]


# Cases added from mutation testing (docs/mutation.md): the working grid's arithmetic and
# the mask clean-up, each by hand.


def test_resampling_samples_each_working_voxel_centre() -> None:
    """5 native voxels of 1 mm (values 0..4) to 5/3 mm: 3 working voxels whose centres lie
    at native index (j + 0.5) * 5/3 - 0.5 = 1/3, 2, 11/3. Nearest takes voxels 0, 2, 4;
    trilinear the values 1/3, 2, 11/3, which come back (linear, ends held) at native
    centres -0.2, 0.4, 1.0, 1.6, 2.2 of the working grid as 1/3, 1, 2, 3, 11/3."""
    grid = WorkingGrid.plan(np.eye(4), (5, 1, 1), (5 / 3, 1.0, 1.0))
    assert grid.shape == (3, 1, 1) and grid.native_shape == (5, 1, 1)
    native = torch.arange(5, dtype=torch.float32).reshape(1, 1, 5, 1, 1)
    assert grid.to_working(native, mode="nearest").flatten().tolist() == [0.0, 2.0, 4.0]
    working = grid.to_working(native)
    assert working.flatten().tolist() == pytest.approx([1 / 3, 2.0, 11 / 3], abs=1e-6)
    back = grid.to_native(working)
    assert back.flatten().tolist() == pytest.approx([1 / 3, 1.0, 2.0, 3.0, 11 / 3], abs=1e-6)


def test_plan_uses_the_spacing_along_each_oblique_axis() -> None:
    """Axes of 1, 2, 3 mm turned 30 degrees about z: 10 voxels each at 2 mm are 5, 10 and
    15 voxels (the affine's row norms, 1.32, 1.80 and 3 mm, would give 7, 9 and 15)."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1.0, 2.0, 3.0])
    grid = WorkingGrid.plan(affine, (10, 10, 10), (2.0, 2.0, 2.0))
    assert grid.shape == (5, 10, 15)
    assert grid.spacing == pytest.approx((2.0, 2.0, 2.0))


def test_plan_keeps_a_single_slice_and_wants_three_spacings() -> None:
    assert WorkingGrid.plan(np.eye(4), (4, 4, 1), (1.0, 1.0, 1.0)).shape == (4, 4, 1)
    for spacing in ((1.0, 1.0), (1.0, 1.0, 1.0, 1.0)):
        with pytest.raises(ValueError):
            WorkingGrid.plan(np.eye(4), (4, 4, 4), spacing)


def test_window_hu_clips_both_ends() -> None:
    hu = torch.tensor([-1200.0, -1000.0, -300.0, 400.0, 900.0])
    assert window_hu(hu, (-1000, 400)).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_body_bbox_by_hand() -> None:
    """Voxels above 100 (strictly) at x 4-5, y 2, z 2, grown by one voxel, or per axis."""
    volume = torch.zeros(1, 1, 8, 6, 5)
    volume[0, 0, 4:6, 2, 2] = 200.0
    volume[0, 0, 3, 2, 1] = 100.0  # at the threshold: not body
    assert body_bbox(volume, 100.0, 1) == (slice(3, 7), slice(1, 4), slice(1, 4))
    assert body_bbox(volume, 100.0, (1, 0, 3)) == (slice(3, 7), slice(2, 3), slice(0, 5))
    assert body_bbox(torch.zeros(8, 6, 5), 0.0, 1) == (slice(0, 8), slice(0, 6), slice(0, 5))


def _voxels(shape, *points) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for point in points:
        mask[point] = 1
    return mask


def test_keep_components_by_volume_in_mm3() -> None:
    """2 mm3 voxels. A: two voxels touching at a corner (one 26-connected component, 4 mm3);
    B: five voxels, one of them touching the others only at a corner (10 mm3)."""
    a = [(0, 0, 0), (1, 1, 1)]
    b = [(4, 4, 4), (4, 4, 5), (4, 5, 4), (5, 4, 4), (5, 5, 5)]
    mask = _voxels((6, 6, 6), *a, *b)
    spacing = (1.0, 1.0, 2.0)
    kept = keep_components(mask, spacing, 10.0)
    assert kept.dtype == bool
    assert np.array_equal(kept, _voxels((6, 6, 6), *b) > 0)  # 10 mm3 is enough; 4 is not
    assert np.array_equal(keep_components(mask, spacing, 4.0), mask > 0)
    assert not keep_components(mask, spacing, 10.5).any()
    unchanged = keep_components(mask, spacing, 0.0)
    assert unchanged.dtype == bool and np.array_equal(unchanged, mask > 0)
    # 0.5 mm3 voxels: a single voxel (0.5 mm3) goes at 1 mm3, a pair (1 mm3) stays.
    mask = _voxels((6, 6, 6), (0, 0, 0), (3, 3, 3), (3, 3, 4))
    kept = keep_components(mask, (0.5, 1.0, 1.0), 1.0)
    assert np.array_equal(kept, _voxels((6, 6, 6), (3, 3, 3), (3, 3, 4)) > 0)


def test_keep_components_touching_follows_26_connectivity() -> None:
    """The anchor touches (2,2,2) at a corner, which touches (3,3,3) at a corner: both kept;
    (5,5,5) touches neither."""
    mask = _voxels((7, 7, 7), (2, 2, 2), (3, 3, 3), (5, 5, 5))
    anchor = _voxels((7, 7, 7), (1, 1, 1))
    kept = keep_components(mask, (1.0, 1.0, 1.0), touching=anchor)
    assert kept.dtype == bool
    assert np.array_equal(kept, _voxels((7, 7, 7), (2, 2, 2), (3, 3, 3)) > 0)
    empty = keep_components(
        np.zeros((3, 3, 3), np.uint8), (1.0, 1.0, 1.0), touching=anchor[:3, :3, :3]
    )
    assert empty.dtype == bool and not empty.any()


@pytest.mark.parametrize("seed", range(6))
def test_keep_components_matches_labelling_the_whole_volume(seed) -> None:
    """Against the plain definition, on every voxel: label ``mask | anchor`` and keep the
    mask's voxels whose component holds an anchor voxel and whose own mask component is
    big enough. Random specks and blobs, some against the array's faces."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    shape = (23, 19, 11)
    mask = ndi.binary_dilation(rng.random(shape) < 0.01, iterations=int(rng.integers(0, 2)))
    mask |= rng.random(shape) < 0.01
    anchor = np.zeros(shape, dtype=bool)
    anchor[2:12, 3:15, 0:6] = True
    anchor &= ~mask
    spacing, min_mm3 = (0.7, 0.7, 2.0), 2.0
    full = np.ones((3, 3, 3), dtype=bool)
    own, n_own = ndi.label(mask, structure=full)
    big = np.bincount(own.ravel(), minlength=n_own + 1) * 0.98 >= min_mm3
    joint, _ = ndi.label(mask | anchor, structure=full)
    reached = np.isin(joint, np.unique(joint[anchor]))
    expected = mask & big[own] & reached
    expected_big = mask & big[own]
    assert np.array_equal(keep_components(mask, spacing, min_mm3, touching=anchor), expected)
    assert np.array_equal(keep_components(mask, spacing, min_mm3), expected_big)
    assert np.array_equal(keep_components(mask, spacing, touching=anchor), mask & reached)


@pytest.mark.parametrize(
    ("margin_mm", "offsets"),
    [
        # 0.5 x 2 x 3 mm voxels: within 1 mm lie 2 voxels either side along the first axis.
        (1.0, [(i, 0, 0) for i in range(-2, 3)]),
        # Within 3 mm: 6 either side along the first axis; 4 either side of the voxels one
        # step along the second (sqrt(0.25 i^2 + 4) <= 3); one step along the third (3 mm).
        (
            3.0,
            [(i, 0, 0) for i in range(-6, 7)]
            + [(i, j, 0) for i in range(-4, 5) for j in (-1, 1)]
            + [(0, 0, -1), (0, 0, 1)],
        ),
    ],
)
def test_lesion_region_is_the_lungs_grown_by_the_margin(margin_mm, offsets) -> None:
    """One lung voxel at (6, 3, 3), 6 voxels (3 mm) from the first face. With blocks no
    larger than a voxel (block_mm 0.5) the margin is exact, its bound included."""
    lungs = _voxels((14, 7, 7), (6, 3, 3))
    region = lesion_region(lungs, (0.5, 2.0, 3.0), margin_mm, block_mm=0.5)
    expected = _voxels((14, 7, 7), *[(6 + i, 3 + j, 3 + k) for i, j, k in offsets])
    assert np.array_equal(region, expected > 0)


def test_lesion_region_without_margin_or_lungs() -> None:
    lungs = _voxels((14, 7, 7), (6, 3, 3))
    assert np.array_equal(lesion_region(lungs, (0.5, 2.0, 3.0), 0.0), lungs > 0)
    assert not lesion_region(np.zeros_like(lungs), (0.5, 2.0, 3.0), 5.0).any()


def test_lesion_region_in_blocks_is_exact_to_within_a_block() -> None:
    """0.5 x 1 x 2 mm voxels in 2 mm blocks (4 x 2 x 1 voxels): every voxel within
    margin - d of the lungs is in, none farther than margin + d, d the block diagonal."""
    from scipy import ndimage as ndi

    spacing = (0.5, 1.0, 2.0)
    lungs = np.zeros((60, 30, 16), dtype=bool)
    lungs[20:26, 10:14, 6:8] = True
    lungs[40, 20, 10] = True
    margin, block = 6.0, float(np.linalg.norm([2.0, 2.0, 2.0]))
    region = lesion_region(lungs, spacing, margin)
    distance = ndi.distance_transform_edt(~lungs, sampling=spacing)
    assert (region | (distance > margin - block)).all()
    assert not (region & (distance > margin + block)).any()
    assert region[lungs].all()


def test_a_region_made_ahead_is_the_one_used(oracle_bundle: Path, tmp_path: Path) -> None:
    """``volseg predict`` makes the lesion region in its decode step: the same region as the
    predictor would make (same mask), and the one it is handed is the one it uses (an empty
    region keeps nothing)."""
    from volseg.inference.predictor import Predictor, region_for
    from volseg.inference.scans import ScanSource
    from volseg.stages.predict import _DecodeSettings, decode_scan

    shape, aff = (60, 40, 10), np.diag([1.5, 1.5, 5.0, 1.0])
    hu = np.full(shape, -850, dtype=np.int16)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[10:30, 5:35, :] = 1
    hu[30:36, 10:20, 2:8] = 40  # consolidation just outside the lung mask
    src = tmp_path / "in" / "scan_a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, aff), src)
    nib.save(nib.Nifti1Image(lungs, aff), tmp_path / "in" / "scan_a_lungs.nii.gz")
    predictor = Predictor.from_bundle(load_bundle(oracle_bundle, torch.device("cpu")))
    settings = _DecodeSettings(tmp_path / "in", True, None, (-1000.0, 400.0), predictor.options)
    decoded = decode_scan(ScanSource(src), settings)
    expected = lesion_region(lungs, (1.5, 1.5, 5.0), predictor.options.lung_margin_mm)
    assert np.array_equal(decoded.region, expected)
    image = decoded.scan.array
    made_here = predictor.predict(image, aff, lungs)
    made_ahead = predictor.predict(image, aff, lungs, decoded.region)
    assert made_here.mask.sum() > 0 and np.array_equal(made_here.mask, made_ahead.mask)
    assert not predictor.predict(image, aff, lungs, np.zeros(shape, bool)).mask.any()
    off = _DecodeSettings(tmp_path / "in", False, None, (-1000.0, 400.0), predictor.options)
    assert decode_scan(ScanSource(src), off).region is None
    assert region_for(None, (1.5, 1.5, 5.0), predictor.options) is None


def test_a_bundle_predicts_channels_last_on_cpu_with_the_same_probabilities(
    tmp_path: Path,
) -> None:
    """On a CPU ``volseg predict`` runs the network in ``channels_last_3d`` (faster oneDNN
    convolutions); the probabilities match the contiguous network's to float rounding."""
    from volseg.inference.predictor import PredictOptions, Predictor
    from volseg.models import build_model

    torch.manual_seed(0)
    params = {
        "widths": [4, 8],
        "strides": [[2, 2, 1]],
        "hidden_size": 16,
        "depth": 1,
        "num_heads": 2,
        "norm": "batch",
    }
    recipe = Recipe((1.5, 1.5, 5.0), (-1000, 400), (16, 16, 8))
    net = build_model("transunet3d", **params).eval()
    with torch.no_grad():  # running statistics away from 0/1, so the norms do work
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = save_bundle(tmp_path / "model.pt", net, "transunet3d", params, recipe, {})
    predictor = Predictor.from_bundle(load_bundle(path, torch.device("cpu")))
    convs = [m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convs)
    assert any(not c.weight.is_contiguous() for c in convs)
    contiguous = Predictor(net, recipe, PredictOptions.resolve(recipe, {}))
    hu = np.random.default_rng(0).normal(-700, 200, (40, 36, 12)).astype(np.float32)
    aff = np.diag([1.5, 1.5, 5.0, 1.0])
    fast, plain = predictor.probability(hu, aff), contiguous.probability(hu, aff)
    assert np.abs(fast - plain).max() < 1e-5 and np.abs(plain - 0.5).max() > 1e-3


def test_a_folder_of_scans_with_their_masks_beside_them(tmp_path: Path) -> None:
    """The layout of ``../shared/data/real`` (``ct.nii.gz`` beside ``ct_lungs.nii.gz``):
    the scans are the inputs, the masks are left out instead of colliding with their scan's
    id; a folder of masks alone is refused by name."""
    from volseg.inference.scans import discover_scans

    folder = tmp_path / "cts"
    folder.mkdir()
    volume = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for name in ("a.nii.gz", "a_lungs.nii.gz", "b.nii", "b_mask.nii.gz"):
        nib.save(volume, folder / name)
    assert [s.id for s in discover_scans(folder)] == ["a", "b"]
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(volume, masks / "a_lungs.nii.gz")
    with pytest.raises(InputError, match="only mask files"):
        discover_scans(masks)
