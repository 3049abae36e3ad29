"""Paired per-scan differences of the study's arms: strata, seeds, CIs (hand-computed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from volseg.evaluation.study_paired import paired_rows, stratum_of

CATEGORIES = {"a": "CT-1", "b": "CT-2", "c": "CT-4", "d": "CT-0"}


def _cell(tmp_path: Path, arm: str, seed: int, dice: dict[str, float]) -> dict:
    run_dir = tmp_path / f"seed-{seed}" / arm
    (run_dir / "evaluate").mkdir(parents=True)
    text = "case_id,dice\n" + "".join(f"{c},{v}\n" for c, v in dice.items())
    (run_dir / "evaluate" / "per_case.csv").write_text(text)
    return {
        "seed": seed,
        "backbone": "unet3d",
        "recalibration": "none",
        "arm": arm,
        "n_labeled": "2",
        "status": "done",
        "run_dir": str(run_dir),
    }


def test_strata_pool_ct2_to_ct4() -> None:
    assert [stratum_of(c) for c in ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")] == [
        "CT-0",
        "CT-1",
        "CT-2+",
        "CT-2+",
        "CT-2+",
    ]


def test_differences_are_per_scan_within_seed_then_averaged(tmp_path: Path) -> None:
    rows = [
        _cell(tmp_path, "scratch", 0, {"a": 0.5, "b": 0.6, "c": 0.7, "d": 1.0}),
        _cell(tmp_path, "full", 0, {"a": 0.6, "b": 0.6, "c": 0.9, "d": 0.0}),
        _cell(tmp_path, "scratch", 1, {"a": 0.4, "b": 0.6, "c": 0.8}),  # d not scored
        _cell(tmp_path, "full", 1, {"a": 0.5, "b": 0.7, "c": 0.8, "d": 1.0}),
    ]
    out = {r["stratum"]: r for r in paired_rows(rows, CATEGORIES, n_resamples=500)}
    # d is missing in one seed, so it is left out everywhere (each seed weighs the same)
    assert list(out) == ["all", "CT-1", "CT-2+"]
    # per-seed differences a: 0.1, 0.1; b: 0.0, 0.1; c: 0.2, 0.0 -> per scan 0.1, 0.05, 0.1
    assert out["all"]["diff_mean"] == pytest.approx(0.25 / 3)
    assert out["all"]["n_scans"] == 3 and out["all"]["n_seeds"] == 2
    assert out["all"]["diff_per_seed"] == "+0.100/+0.067"
    assert out["all"]["reference_dice"] == pytest.approx(3.6 / 6)
    assert out["all"]["arm_dice"] == pytest.approx(4.1 / 6)
    low, high = out["all"]["diff_ci95_low"], out["all"]["diff_ci95_high"]
    assert 0.05 - 1e-9 <= low <= out["all"]["diff_mean"] <= high <= 0.1 + 1e-9
    assert out["all"]["ci_excludes_zero"] is True
    assert out["CT-1"]["diff_mean"] == pytest.approx(0.1)
    assert out["CT-1"]["diff_ci95_low"] is None  # one scan: no bootstrap CI
    assert out["CT-2+"]["diff_mean"] == pytest.approx(0.075)
    assert out["CT-2+"]["n_scans"] == 2


def test_no_reference_arm_gives_no_rows(tmp_path: Path) -> None:
    rows = [_cell(tmp_path, "full", 0, {"a": 0.5, "b": 0.6})]
    assert paired_rows(rows, CATEGORIES) == []


def test_unfinished_cells_are_left_out(tmp_path: Path) -> None:
    rows = [
        _cell(tmp_path, "scratch", 0, {"a": 0.5, "b": 0.6}),
        _cell(tmp_path, "full", 0, {"a": 0.7, "b": 0.6}),
        _cell(tmp_path, "scratch", 1, {"a": 0.1, "b": 0.1}),
        {**_cell(tmp_path, "full", 1, {"a": 0.9, "b": 0.9}), "status": "failed"},
    ]
    (only,) = [r for r in paired_rows(rows, CATEGORIES) if r["stratum"] == "all"]
    assert only["n_seeds"] == 1 and only["diff_mean"] == pytest.approx(0.1)


def test_painted_stratum_needs_a_current_painted_result(tmp_path: Path) -> None:
    """A painted evaluation on disk counts only for rows that carry its figures
    (``painted_n``: scored with the cell's current model); without them it is ignored."""
    rows = [
        _cell(tmp_path, "scratch", 0, {"a": 0.5}),
        _cell(tmp_path, "full", 0, {"a": 0.7}),
    ]
    for row, dice in zip(rows, (0.2, 0.6), strict=True):
        folder = Path(row["run_dir"]) / "painted" / "evaluate"
        folder.mkdir(parents=True)
        (folder / "per_case.csv").write_text(f"case_id,dice\np1,{dice}\n")
    assert "painted" not in {r["stratum"] for r in paired_rows(rows, CATEGORIES)}
    current = [{**r, "painted_n": 1} for r in rows]
    out = {r["stratum"]: r for r in paired_rows(current, CATEGORIES)}
    assert out["painted"]["diff_mean"] == pytest.approx(0.4)
