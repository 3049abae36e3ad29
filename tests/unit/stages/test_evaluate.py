"""`volseg evaluate` end to end on tiny NIfTI files: outputs, pairing, geometry checks."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from volseg.cli import main
from volseg.errors import InputError
from volseg.evaluation.metrics import case_metrics
from volseg.io import write_nifti
from volseg.stages.evaluate import DEFAULT_BINS, run_evaluate

SHAPE = (14, 12, 6)
SPACING = (1.5, 1.5, 3.0)


def _affine(spacing=SPACING) -> np.ndarray:
    aff = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])  # LAS-like, as MosMed
    aff[:3, 3] = (20.0, -15.0, 4.0)
    return aff


def _case(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lungs = np.zeros(SHAPE, np.uint8)
    lungs[1:13, 1:11, 1:5] = 1
    ref = np.zeros(SHAPE, np.uint8)
    ref[3 : 5 + 2 * i, 3:7, 2:4] = 1
    pred = np.roll(ref, 1, axis=1)
    pred[11, 9, 1] = 1  # a false-positive voxel
    return pred, ref, lungs


@pytest.fixture()
def dataset(tmp_path: Path) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("pred", "ref", "lungs")}
    for i in range(3):
        pred, ref, lungs = _case(i)
        sid = f"study_{i:04d}"
        write_nifti(dirs["pred"] / f"{sid}_mask.nii.gz", pred, _affine())
        write_nifti(dirs["ref"] / f"{sid}_mask.nii.gz", ref, _affine())
        write_nifti(dirs["lungs"] / f"{sid}_lungs.nii.gz", lungs, _affine())
    pred, ref, _ = _case(0)
    write_nifti(dirs["pred"] / "study_0090_mask.nii.gz", pred, _affine())  # no reference
    write_nifti(dirs["ref"] / "study_0091_mask.nii.gz", ref, _affine())  # no prediction
    write_nifti(dirs["pred"] / "study_0000_prob.nii.gz", pred.astype(np.float32) * 0.7, _affine())
    (dirs["pred"] / "summary.csv").write_text("not a mask\n")
    return dirs


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_writes_consistent_outputs(dataset, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="volseg.stages.evaluate"):
        out = run_evaluate(
            dataset["pred"],
            dataset["ref"],
            tmp_path / "out",
            lungs_dir=dataset["lungs"],
            bootstrap=200,
        )
    # one line per kind of unpaired file, naming them
    assert [r.getMessage() for r in caplog.records] == [
        "1 prediction(s) without a reference, not evaluated (all in summary.json): "
        "study_0090_mask.nii.gz",
        "1 reference(s) without a prediction, not evaluated (all in summary.json): "
        "study_0091_mask.nii.gz",
    ]
    names = {p.name for p in out.iterdir()}
    assert {"per_case.csv", "summary.json", "report.md", "dice_vs_burden.png"} <= names
    assert {"bland_altman_volume.png", "grade_confusion.png"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    rows = _read_csv(out / "per_case.csv")
    assert [r["case_id"] for r in rows] == ["study_0000", "study_0001", "study_0002"]
    for i, row in enumerate(rows):
        pred, ref, lungs = _case(i)
        expected = case_metrics(pred, ref, SPACING, lungs)
        for key in ("dice", "iou", "sensitivity", "precision", "hd95_mm", "nsd", "lesion_f1"):
            assert float(row[key]) == pytest.approx(expected[key], rel=1e-6), key
        assert float(row["ref_involvement_pct"]) == pytest.approx(expected["ref_involvement_pct"])
        assert int(row["n_false_pos"]) == 1

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["pairs"] == 3
    assert [Path(p).name for p in summary["unmatched"]["pred_without_ref"]] == [
        "study_0090_mask.nii.gz"
    ]
    assert [Path(p).name for p in summary["unmatched"]["ref_without_pred"]] == [
        "study_0091_mask.nii.gz"
    ]
    dice = [float(r["dice"]) for r in rows]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    lo, hi = summary["metrics"]["dice"]["ci95"]
    assert lo <= np.mean(dice) <= hi
    assert sum(s["n_cases"] for s in summary["stratified"]) == 3
    assert summary["grade_confusion"]["n"] == 3
    assert "hd95_mm" in summary["conventions"]

    report = (out / "report.md").read_text()
    assert "study_0090_mask.nii.gz" in report and "study_0091_mask.nii.gz" in report
    for png in ("dice_vs_burden.png", "bland_altman_volume.png", "grade_confusion.png"):
        assert f"]({png})" in report


def test_evaluate_is_deterministic_by_seed(dataset, tmp_path) -> None:
    a = run_evaluate(dataset["pred"], dataset["ref"], tmp_path / "a", bootstrap=100, seed=3)
    b = run_evaluate(dataset["pred"], dataset["ref"], tmp_path / "b", bootstrap=100, seed=3)
    ca = json.loads((a / "summary.json").read_text())["metrics"]["dice"]["ci95"]
    cb = json.loads((b / "summary.json").read_text())["metrics"]["dice"]["ci95"]
    assert ca == cb
    # without lungs: no strata or grades, and no confusion plot
    assert json.loads((a / "summary.json").read_text())["stratified"] is None
    assert not (a / "grade_confusion.png").exists()


def test_geometry_mismatch_fails_via_cli_and_writes_nothing(dataset, tmp_path, capsys) -> None:
    pred, _, _ = _case(1)
    bad = dataset["pred"] / "study_0001_mask.nii.gz"
    write_nifti(bad, pred, _affine((1.5, 1.5, 2.0)))  # same shape, different slice spacing
    out = tmp_path / "out"
    rc = main(
        ["evaluate", "--pred", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(bad) in err[0] and "study_0001_mask.nii.gz" in err[0]
    assert "--resample" in err[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_resample_puts_prediction_on_reference_grid(tmp_path) -> None:
    """A prediction on a 3× finer grid whose voxels nest in the reference's: Dice 1 after."""
    _, ref, _ = _case(2)
    fine = np.repeat(np.repeat(np.repeat(ref, 3, 0), 3, 1), 3, 2)
    # fine voxel 3i+1 has the same centre as coarse voxel i
    to_coarse = np.eye(4)
    to_coarse[:3, :3] /= 3.0
    to_coarse[:3, 3] = -1.0 / 3.0
    write_nifti(tmp_path / "ref" / "study_0002_mask.nii.gz", ref, _affine())
    write_nifti(tmp_path / "pred" / "study_0002_mask.nii.gz", fine, _affine() @ to_coarse)
    with pytest.raises(InputError, match="different grids"):
        run_evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", bootstrap=0)
    rc = main(
        ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
         "-o", str(tmp_path / "out"), "--resample", "--bootstrap", "0"]
    )  # fmt: skip
    assert rc == 0
    row = _read_csv(tmp_path / "out" / "per_case.csv")[0]
    assert row["resampled"] == "1"
    assert float(row["dice"]) == pytest.approx(1.0)
    assert float(row["hd95_mm"]) == pytest.approx(0.0)


def test_no_pairs_is_an_input_error(tmp_path) -> None:
    pred, ref, _ = _case(0)
    write_nifti(tmp_path / "pred" / "study_0001_mask.nii.gz", pred, _affine())
    write_nifti(tmp_path / "ref" / "study_0002_mask.nii.gz", ref, _affine())
    with pytest.raises(InputError, match="no prediction"):
        run_evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    with pytest.raises(InputError, match="not found"):
        run_evaluate(tmp_path / "nope", tmp_path / "ref", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_probability_map_is_refused(tmp_path) -> None:
    _, ref, _ = _case(0)
    write_nifti(tmp_path / "ref" / "study_0000_mask.nii.gz", ref, _affine())
    write_nifti(
        tmp_path / "pred" / "study_0000_mask.nii.gz", ref * 0.6, _affine(), dtype=np.float32
    )
    with pytest.raises(InputError, match="probabilities"):
        run_evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")


def test_empty_cases_counted_as_missing(tmp_path) -> None:
    _, ref, _ = _case(0)
    empty = np.zeros(SHAPE, np.uint8)
    write_nifti(tmp_path / "ref" / "study_0000_mask.nii.gz", ref, _affine())
    write_nifti(tmp_path / "pred" / "study_0000_mask.nii.gz", empty, _affine())  # all missed
    write_nifti(tmp_path / "ref" / "study_0001_mask.nii.gz", ref, _affine())
    write_nifti(tmp_path / "pred" / "study_0001_mask.nii.gz", ref, _affine())  # perfect
    out = run_evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", bootstrap=0)
    summary = json.loads((out / "summary.json").read_text())
    hd = summary["metrics"]["hd95_mm"]
    assert (hd["n"], hd["n_missing"], hd["mean"]) == (1, 1, 0.0)
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(0.5)
    rows = _read_csv(out / "per_case.csv")
    assert rows[0]["hd95_mm"] == "" and rows[0]["precision"] == ""
    assert math.isclose(float(rows[1]["dice"]), 1.0)


def test_help_defaults_match_config() -> None:
    from volseg.commands.evaluate import HELP_DEFAULTS
    from volseg.config import EvaluateConfig

    cfg = EvaluateConfig()
    assert HELP_DEFAULTS["bootstrap"] == cfg.bootstrap
    assert HELP_DEFAULTS["nsd_tolerance_mm"] == cfg.nsd_tolerance_mm
    assert tuple(HELP_DEFAULTS["involvement_bins"]) == tuple(cfg.involvement_bins)
    assert tuple(DEFAULT_BINS) == tuple(cfg.involvement_bins)


def test_lesion_types_scored_per_type_by_hand(tmp_path: Path) -> None:
    """Ground glass and consolidation Dice and volume differences, hand-computed; a type the
    reference lacks has no Dice (NaN) but its false positives show in the volume."""
    pred_dir, ref_dir, types_dir = tmp_path / "pred", tmp_path / "ref", tmp_path / "types"
    ref_t = np.zeros(SHAPE, np.uint8)
    ref_t[2:6, 2:4, 2] = 1  # 8 ground-glass voxels
    ref_t[8:10, 2:4, 2] = 2  # 4 consolidation voxels
    pred_t = np.zeros(SHAPE, np.uint8)
    pred_t[2:4, 2:4, 2] = 1  # 4 of the ground glass ...
    pred_t[4:6, 2:4, 2] = 2  # ... the other 4 called consolidation
    pred_t[8:10, 2:4, 2] = 2  # the 4 consolidation voxels
    only_ggo = np.where(ref_t == 1, 1, 0).astype(np.uint8)
    for sid, p, r in (("study_0000", pred_t, ref_t), ("study_0001", pred_t, only_ggo)):
        write_nifti(pred_dir / f"{sid}_mask.nii.gz", (p > 0).astype(np.uint8), _affine())
        write_nifti(pred_dir / f"{sid}_types.nii.gz", p, _affine())
        write_nifti(ref_dir / f"{sid}_mask.nii.gz", (r > 0).astype(np.uint8), _affine())
        write_nifti(types_dir / f"{sid}_types.nii.gz", r, _affine())
    out = run_evaluate(pred_dir, ref_dir, tmp_path / "eval", bootstrap=0, types_dir=types_dir)
    rows = {r["case_id"]: r for r in _read_csv(out / "per_case.csv")}
    voxel_ml = 1.5 * 1.5 * 3.0 / 1000.0
    first, second = rows["study_0000"], rows["study_0001"]
    assert float(first["ggo_dice"]) == pytest.approx(2 * 4 / (4 + 8))
    assert float(first["consolidation_dice"]) == pytest.approx(2 * 4 / (8 + 4))
    assert float(first["ggo_volume_diff_ml"]) == pytest.approx(-4 * voxel_ml)
    assert float(first["consolidation_volume_diff_ml"]) == pytest.approx(4 * voxel_ml)
    assert second["consolidation_dice"] in ("", "nan")  # the reference holds none
    assert float(second["consolidation_volume_diff_ml"]) == pytest.approx(8 * voxel_ml)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["consolidation_dice"]["n"] == 1
    assert summary["metrics"]["ggo_dice"]["mean"] == pytest.approx(2 / 3)
    assert (
        "ggo_dice" in (out / "report.md").read_text() or "ground" in (out / "report.md").read_text()
    )
    with pytest.raises(InputError, match="lesion-type folder"):
        run_evaluate(pred_dir, ref_dir, tmp_path / "e2", types_dir=tmp_path / "missing")


def _report(folder: Path, sid: str, grade: int | None, ml: float, pct: float | None) -> None:
    record = {"id": sid, "ct_grade": grade, "lesion_volume_ml": ml, "involvement_pct": pct}
    (folder / f"{sid}.json").write_text(json.dumps(record), encoding="utf-8")


def test_every_scan_is_graded_against_its_category(dataset, tmp_path) -> None:
    """Scans without a mask count too: grade vs MosMed category, burden on CT-0 scans.

    Six scans by hand: CT-0 called 0 (1 mL), CT-0 called 1 (12 mL, 3 %), CT-1 called 1,
    CT-2 called 1 (one off), CT-3 called 1 (two off), CT-4 without a report.
    Accuracy 2/5, within one grade 4/5; CT-0: 1 of 2 called CT-0, mean 6.5 mL, 1.5 %.
    """
    reports = dataset["pred"]
    _report(reports, "study_0000", 0, 1.0, 0.0)
    _report(reports, "study_0001", 1, 12.0, 3.0)
    _report(reports, "study_0002", 1, 30.0, 8.0)
    _report(reports, "study_0100", 1, 40.0, 9.0)
    _report(reports, "study_0101", 1, 50.0, 10.0)
    categories = tmp_path / "categories.csv"
    categories.write_text(
        "id,category\nstudy_0000,CT-0\nstudy_0001,CT-0\nstudy_0002,CT-1\n"
        "study_0100,CT-2\nstudy_0101,CT-3\nstudy_0102,CT-4\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    args = ["evaluate", "--pred", str(reports), "--ref", str(dataset["ref"]), "-o", str(out)]
    assert main([*args, "--lungs", str(dataset["lungs"]), "--categories", str(categories)]) == 0
    scans = json.loads((out / "summary.json").read_text())["all_scans"]
    assert (scans["n_scans"], scans["n_with_report"], scans["n_with_grade"]) == (6, 5, 5)
    assert scans["missing_report"] == ["study_0102"]
    grade = scans["grade"]
    assert grade["accuracy"] == pytest.approx(2 / 5)
    assert grade["within_one_accuracy"] == pytest.approx(4 / 5)
    assert grade["matrix"][3][1] == 1 and grade["matrix"][0][0] == 1
    healthy = scans["healthy"]
    assert (healthy["n"], healthy["called_ct0"]) == (2, 1)
    assert healthy["lesion_volume_ml"]["mean"] == pytest.approx(6.5)
    assert healthy["involvement_pct"]["mean"] == pytest.approx(1.5)
    rows = _read_csv(out / "per_scan.csv")
    assert [r["case_id"] for r in rows][-1] == "study_0102" and rows[-1]["pred_grade"] == ""
    report = (out / "report.md").read_text()
    assert "6 scans with a category, 5 with a predict report" in report
    assert "called CT-0: 1 of 2" in report
    assert (out / "grade_vs_category.png").is_file()


def test_categories_from_a_dataset_folder_and_bad_ones(tmp_path) -> None:
    from volseg.evaluation.all_scans import read_categories

    for category, sid in (("CT-0", "study_0001"), ("CT-3", "study_0002")):
        folder = tmp_path / "data" / "studies" / category
        folder.mkdir(parents=True)
        (folder / f"{sid}.nii.gz").write_bytes(b"")
    assert read_categories(tmp_path / "data") == {"study_0001": "CT-0", "study_0002": "CT-3"}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,category\nstudy_0001,CT-5\n", encoding="utf-8")
    with pytest.raises(InputError, match="bad.csv: study study_0001"):
        read_categories(bad)


_CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((i) => i.complete && i.naturalWidth > 0);
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-loaded", String(loaded.length));
});
</script>
</body>"""


def _chromium() -> str | None:
    import shutil

    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_html_report_is_self_contained_with_a_case_montage(dataset, tmp_path) -> None:
    """report.html embeds every plot (no file beside it needed) and the montage shows the
    cases lowest Dice first; a headless Chromium opens it and decodes every image."""
    import re
    import shutil
    import subprocess

    images = tmp_path / "images"
    for i in range(3):
        ct = np.full(SHAPE, -850, dtype=np.int16)
        ct[3 : 5 + 2 * i, 3:7, 2:4] = -500
        write_nifti(images / f"study_{i:04d}.nii.gz", ct, _affine())
    (dataset["pred"] / "study_0001.json").write_text(
        '{"gated": true, "gated_involvement_pct": 2.5}', encoding="utf-8"
    )
    out = tmp_path / "out"
    args = ["evaluate", "--pred", str(dataset["pred"]), "--ref", str(dataset["ref"])]
    args += ["-o", str(out), "--lungs", str(dataset["lungs"]), "--images", str(images)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    dice = {r["case_id"]: float(r["dice"]) for r in _read_csv(out / "per_case.csv")}
    assert summary["montage_cases"] == sorted(dice, key=dice.get)
    # only study_0001 has a predict report (gated); without one the flag is unknown
    cases = _read_csv(out / "per_case.csv")
    assert [r["gated"] for r in cases] == ["", "True", ""]
    assert [r["gated_involvement_pct"] for r in cases] == ["", "2.5", ""]
    assert (out / "montage.png").is_file()

    page = (out / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(sources) == len(summary["plots"]) >= 4
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in page and "Dice" in page

    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium installed (scripts/test.sh installs chromium-headless-shell)")
    alone = tmp_path / "alone"  # the page without its folder: nothing else to load
    alone.mkdir()
    (alone / "report.html").write_text(page.replace("</body>", _CHECK_IMAGES), encoding="utf-8")
    shutil.rmtree(out)
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
        + ["--dump-dom", (alone / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-loaded="(\d+)"', done.stdout)
    assert body is not None, done.stdout[-2000:]
    assert int(body.group(1)) == len(sources) and int(body.group(2)) == len(sources)
