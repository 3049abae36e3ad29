"""The out-of-distribution check: training statistics in the bundle, flags and reasons in
predict's JSON, one console warning per run, older bundles without statistics."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.oracle import OracleNet
from volseg.bundle import load_bundle, save_bundle
from volseg.inference import ood
from volseg.models import registry
from volseg.recipe import Recipe
from volseg.stages.finetune_stats import training_scan_stats
from volseg.stages.predict import run_predict

WINDOW = (-1000.0, 400.0)
MARGINS = ood.OodMargins(in_plane_mm=0.2, slice_mm=1.0, lung_hu=50.0)


def _lung_hu(p10: float, p50: float) -> dict[int, float]:
    """Percentiles with the two checked ones set (the others in between, unchecked)."""
    return {
        5: p10 - 10,
        10: p10,
        25: (p10 + p50) / 2,
        50: p50,
        75: p50 + 50,
        90: p50 + 90,
        95: p50 + 100,
    }


@pytest.fixture()
def stats() -> dict:
    """Training scans at 0.7-0.9 mm in-plane, 8-10 mm slices, lung medians -860 to -800."""
    spacings = [((0.7, 0.7), 8.0), ((0.9, 0.9), 10.0), ((0.8, 0.8), 8.0)]
    lungs = [_lung_hu(-900, -860), _lung_hu(-880, -800), _lung_hu(-890, -830)]
    return ood.training_stats(spacings, lungs, WINDOW)


def test_training_stats_hold_the_ranges(stats: dict) -> None:
    assert stats["n_scans"] == 3 and stats["lung_hu_scans"] == 3
    assert stats["in_plane_mm"] == [0.7, 0.9] and stats["slice_mm"] == [8.0, 10.0]
    median = stats["lung_hu_percentiles"]["50"]
    assert median["min"] == -860 and median["max"] == -800
    assert median["mean"] == pytest.approx(-830.0)
    assert median["sd"] == pytest.approx(np.std([-860, -800, -830]), abs=0.05)


def test_a_scan_like_the_training_scans_is_not_flagged(stats: dict) -> None:
    # at the edge of every range, within its margin
    inside = ood.ScanFeatures((0.95, 1.05), 10.9, _lung_hu(-940, -760))
    block = ood.check_scan(stats, inside, MARGINS)
    assert block["available"] is True and block["flagged"] is False and block["reasons"] == []


def test_foreign_scan_is_flagged_with_its_reasons_in_physical_units(stats: dict) -> None:
    foreign = ood.ScanFeatures((0.4, 0.4), 2.5, _lung_hu(-880, -640))
    block = ood.check_scan(stats, foreign, MARGINS)
    assert block["flagged"] is True
    assert block["reasons"] == [
        "in-plane spacing 0.40 × 0.40 mm outside training 0.70 to 0.90 mm (± 0.2 mm)",
        "slice spacing 2.50 mm outside training 8.00 to 10.00 mm (± 1 mm)",
        "lung HU median -640 vs training -830 ± 24 (range -860 to -800 HU, ± 50 HU)",
    ]
    assert block["scan"]["slice_mm"] == 2.5 and block["scan"]["lung_hu_percentiles"]["50"] == -640
    # the aerated lung (10th percentile) far denser than any training scan's
    dense = ood.ScanFeatures((0.8, 0.8), 8.0, _lung_hu(-700, -820))
    (reason,) = ood.check_scan(stats, dense, MARGINS)["reasons"]
    assert reason.startswith("lung HU 10th percentile -700 vs training -890")
    # wider margins: nothing fires
    wide = ood.OodMargins(in_plane_mm=1.0, slice_mm=8.0, lung_hu=300.0)
    assert ood.check_scan(stats, foreign, wide)["flagged"] is False


def test_without_lung_mask_only_spacing_is_checked(stats: dict) -> None:
    block = ood.check_scan(stats, ood.ScanFeatures((0.8, 0.8), 8.0, None), MARGINS)
    assert block["flagged"] is False and block["not_checked"] == ["lung HU (no lung mask)"]
    assert ood.check_scan(None, ood.ScanFeatures((0.8, 0.8), 8.0, None), MARGINS) == {
        "available": False,
        "flagged": None,
        "reasons": [],
        "note": ood.UNAVAILABLE,
    }


def test_grid_spacing_follows_the_head_foot_axis_in_any_voxel_order() -> None:
    las = np.diag([-0.7, 0.8, 5.0, 1.0])
    assert ood.grid_spacing(las) == ((0.7, 0.8), 5.0)
    permuted = np.zeros((4, 4))
    permuted[:3, :3] = [[0, 0.8, 0], [0, 0, -0.7], [5.0, 0, 0]]  # voxel axes (S, R, P)
    permuted[3, 3] = 1
    assert ood.grid_spacing(permuted) == ((0.7, 0.8), 5.0)


def test_lung_hu_percentiles_are_clipped_to_the_window() -> None:
    hu = np.array([-2048.0, -900.0, -850.0, -800.0, 500.0])
    lungs = np.array([1, 1, 1, 0, 0])
    values = ood.lung_hu_percentiles(hu, lungs, WINDOW)
    assert values is not None and values[50] == -900.0 and values[5] == pytest.approx(-990.0)
    assert ood.lung_hu_percentiles(hu, np.zeros(5), WINDOW) is None
    assert ood.lung_hu_percentiles(hu, None, WINDOW) is None


def _nifti(path: Path, data: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)
    return path


def test_training_scan_stats_measure_the_training_split_only(tmp_path: Path) -> None:
    """Spacing from every training scan's cache entry, lung HU from its native image inside
    prepare's lung mask; validation and test scans are not looked at."""
    lungs = np.zeros((8, 8, 4), np.uint8)
    lungs[2:6, 2:6, 1:3] = 1

    def study(sid: str, lung_hu: float, spacing: tuple[float, float, float]):
        image = np.full(lungs.shape, 40.0, np.float32)
        image[lungs > 0] = lung_hu
        return SimpleNamespace(
            id=sid,
            image=_nifti(tmp_path / f"{sid}.nii.gz", image, spacing),
            lungs=_nifti(tmp_path / f"{sid}_lungs.nii.gz", lungs, spacing),
            affine=np.diag([*spacing, 1.0]),
        )

    train = [study("a", -850, (0.7, 0.7, 8.0)), study("b", -820, (0.9, 0.9, 10.0))]
    splits = {"train": train, "val": [study("v", -100, (3.0, 3.0, 1.0))]}
    prepared = SimpleNamespace(
        datalist=SimpleNamespace(studies_in=lambda split: splits[split]),
        volumes_of=lambda studies: [SimpleNamespace(source_affine=s.affine) for s in studies],
    )
    stats = training_scan_stats(prepared, WINDOW)
    assert stats["n_scans"] == 2 and stats["lung_hu_scans"] == 2
    assert stats["in_plane_mm"] == [0.7, 0.9] and stats["slice_mm"] == [8.0, 10.0]
    assert stats["lung_hu_percentiles"]["50"]["min"] == -850
    assert stats["lung_hu_percentiles"]["50"]["max"] == -820


def _bundle(path: Path, stats: dict | None) -> Path:
    return save_bundle(
        path,
        OracleNet(),
        "oracle",
        {"level": 0.6},
        Recipe((1.5, 1.5, 5.0), WINDOW, (16, 16, 8)),
        {"overlap": 0.25, "min_component_mm3": 0},
        training_stats=stats,
    )


def _scans(folder: Path) -> list[Path]:
    """A scan at the training spacing and one at 0.5 mm slices, both 'lung' at -850 HU."""
    hu = np.full((24, 24, 12), -850, np.int16)
    hu[8:12, 8:12, 4:8] = 200
    return [
        _nifti(folder / "like.nii.gz", hu, (0.8, 0.8, 8.0)),
        _nifti(folder / "thin.nii.gz", hu, (0.8, 0.8, 0.5)),
    ]


def test_predict_records_the_flag_and_warns_once(
    stats: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    bundle = _bundle(tmp_path / "model.pt", stats)
    assert load_bundle(bundle).training_stats == stats
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        run_predict(bundle, _scans(tmp_path / "in"), out, use_lungs=False)
    like = json.loads((out / "like.json").read_text())["out_of_distribution"]
    thin = json.loads((out / "thin.json").read_text())["out_of_distribution"]
    assert like["flagged"] is False and like["not_checked"] == ["lung HU (no lung mask)"]
    assert thin["flagged"] is True
    assert thin["reasons"] == ["slice spacing 0.50 mm outside training 8.00 to 10.00 mm (± 1 mm)"]
    warnings = [r.getMessage() for r in caplog.records if "training distribution" in r.getMessage()]
    assert warnings == [
        "1 of 2 scan(s) lie outside the model's training distribution (reasons in "
        "out_of_distribution of their JSON): thin"
    ]
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert rows["like"]["out_of_distribution"] == "False"
    assert rows["thin"]["out_of_distribution"] == "True"
    assert rows["thin"]["ood_reasons"].startswith("slice spacing 0.50 mm")


def test_old_bundle_without_statistics_loads_and_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A bundle written before ``training_stats`` existed: no such key at all."""
    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    bundle = _bundle(tmp_path / "model.pt", None)
    payload = torch.load(bundle, weights_only=True)
    del payload["training_stats"]
    torch.save(payload, bundle)
    assert load_bundle(bundle).training_stats is None
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        run_predict(bundle, _scans(tmp_path / "in"), out, use_lungs=False)
    for sid in ("like", "thin"):
        block = json.loads((out / f"{sid}.json").read_text())["out_of_distribution"]
        assert block == ood.unavailable()
        assert (out / f"{sid}_mask.nii.gz").is_file()
    assert "out-of-distribution check unavailable" in caplog.text
    assert "training distribution" not in caplog.text
    with open(out / "summary.csv", newline="") as fh:
        assert {r["out_of_distribution"] for r in csv.DictReader(fh)} == {""}


def test_ood_check_can_be_switched_off(
    stats: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    bundle = _bundle(tmp_path / "model.pt", stats)
    out = tmp_path / "out"
    run_predict(bundle, _scans(tmp_path / "in"), out, use_lungs=False, ood_check=False)
    block = json.loads((out / "thin.json").read_text())["out_of_distribution"]
    assert block["available"] is False and "ood_check" in block["note"]


def test_a_lung_density_aligned_model_reports_each_scans_shift(
    stats: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data.lung_density_hu`` in the recipe: predict aligns each scan inside the lung mask
    it uses and records how far in the scan's ``out_of_distribution`` block."""
    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    bundle = save_bundle(
        tmp_path / "model.pt",
        OracleNet(),
        "oracle",
        {"level": 0.6},
        Recipe((1.5, 1.5, 5.0), WINDOW, (16, 16, 8), lung_density_hu=-800.0),
        {"overlap": 0.25, "min_component_mm3": 0},
        training_stats=stats,
    )
    scan = _scans(tmp_path / "in")[0]  # lung at -850 HU around a block of tissue
    hu = np.asarray(nib.load(str(scan)).dataobj)
    _nifti(tmp_path / "lungs" / "like_lungs.nii.gz", (hu < -500).astype(np.uint8), (0.8, 0.8, 8.0))
    out = tmp_path / "out"
    run_predict(bundle, scan, out, lungs=tmp_path / "lungs")
    block = json.loads((out / "like.json").read_text())["out_of_distribution"]
    assert block["lung_density_shift_hu"] == pytest.approx(50.0)
    run_predict(bundle, scan, tmp_path / "unaligned", use_lungs=False)
    block = json.loads((tmp_path / "unaligned" / "like.json").read_text())["out_of_distribution"]
    assert block["lung_density_shift_hu"] is None  # no lung mask: as scanned, and says so
