"""QC rules of pseudo-masks on hand-made rows, and the QC table round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from volseg.errors import InputError
from volseg.pseudo.qc import (
    QC_COLUMNS,
    category_grade,
    check_pseudo,
    make_row,
    passed_ids,
    read_qc,
    write_qc,
)


@pytest.mark.parametrize(
    ("category", "volume", "involvement", "grade", "passed", "words"),
    [
        ("CT-1", 120.0, 10.0, 1, True, "ok"),
        ("CT-1", 300.0, 30.0, 2, True, "ok"),  # one grade away is tolerated
        ("CT-1", 600.0, 60.0, 3, False, "pseudo grade CT-3"),
        ("CT-3", 50.0, 5.0, 1, False, "pseudo grade CT-1"),
        ("CT-1", 0.0, 0.0, 0, False, "empty pseudo-mask"),
        ("CT-4", 3000.0, 95.0, 4, False, "implausible involvement"),
        ("CT-0", 0.0, 0.0, 0, True, "ok"),  # healthy and empty is fine
        ("CT-2", 10.0, None, None, False, "no lung voxels"),
    ],
)
def test_rules(category, volume, involvement, grade, passed, words) -> None:
    ok, reason = check_pseudo(category, volume, involvement, grade)
    assert ok is passed
    assert words in reason


def test_several_failures_are_all_named() -> None:
    ok, reason = check_pseudo("CT-1", 0.0, 95.0, 4)
    assert not ok
    assert "implausible" in reason and "CT-4" in reason and "empty" in reason


def test_max_involvement_is_configurable() -> None:
    assert check_pseudo("CT-4", 1.0, 85.0, 4, max_involvement_pct=80.0)[0] is False
    assert check_pseudo("CT-4", 1.0, 85.0, 4, max_involvement_pct=90.0)[0] is True


def test_category_grade() -> None:
    assert category_grade("CT-3") == 3
    with pytest.raises(InputError):
        category_grade("grade 3")


def test_table_round_trip(tmp_path: Path) -> None:
    q_ok = {"lesion_volume_ml": 12.5, "involvement_pct": 4.2, "ct_grade": 1}
    q_bad = {"lesion_volume_ml": 0.0, "involvement_pct": 0.0, "ct_grade": 0}
    rows = [
        make_row("study_0002", "val", "CT-1", q_bad),
        make_row("study_0001", "train", "CT-1", q_ok),
    ]
    path = write_qc(tmp_path / "qc.csv", rows)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(QC_COLUMNS)
    assert lines[1].startswith("study_0001,train,CT-1,12.5000,4.2000,1,True,ok")
    back = read_qc(path)
    assert [r.study_id for r in back] == ["study_0001", "study_0002"]
    assert back[1].passed is False and "empty" in back[1].reason
    assert passed_ids(path) == ["study_0001"]


def test_read_qc_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="qc.csv"):
        read_qc(tmp_path / "qc.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("study_id,split\nx,train\n")
    with pytest.raises(InputError, match="missing column"):
        read_qc(bad)
