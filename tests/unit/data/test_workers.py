"""Per-study worker processes: how many, results in order, errors, same answers as serial."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.data.test_check import IMAGE_FAULTS, make_clean
from volseg.data import workers
from volseg.data.check import check_dataset
from volseg.data.workers import map_ordered, study_peak_bytes, worker_count
from volseg.errors import InputError


@pytest.fixture
def four_cores(monkeypatch) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def test_requested_count_is_kept_but_not_above_the_tasks() -> None:
    assert worker_count(3, 10, 1e12) == 3  # a request is not second-guessed by memory
    assert worker_count(3, 2, 0.0) == 2
    assert worker_count(0, 10, 0.0) == 0
    assert worker_count(5, None, 0.0) == 5
    assert worker_count(None, 1, 0.0) == 0  # one task: no pool
    assert worker_count(4, 0, 0.0) == 0


def test_a_daemonic_process_works_alone(four_cores, monkeypatch) -> None:
    """A DataLoader worker (daemonic) may not start processes: everything runs in it."""
    import multiprocessing
    from types import SimpleNamespace

    assert worker_count(None, 100, 0.0) == 4
    monkeypatch.setattr(multiprocessing, "current_process", lambda: SimpleNamespace(daemon=True))
    assert worker_count(None, 100, 0.0) == 0
    assert worker_count(3, 10, 0.0) == 0


def test_automatic_count_is_bounded_by_cores_tasks_and_memory(four_cores, monkeypatch) -> None:
    monkeypatch.setattr(workers, "available_memory_bytes", lambda: 10e9)
    assert worker_count(None, 100, 1e9) == 4  # cores
    assert worker_count(None, 3, 1e9) == 3  # tasks
    assert worker_count(None, None, 1e9) == 4
    # 10 GB available, 80 % usable: 8 GB / 3 GB per worker -> 2 workers
    assert worker_count(None, 100, 3e9) == 2
    assert worker_count(None, 100, 5e9) == 0  # one worker fits: work in this process
    monkeypatch.setattr(workers, "available_memory_bytes", lambda: None)
    assert worker_count(None, 100, 1e15) == 4  # memory unknown: cores only


def test_peak_estimate_grows_with_the_study() -> None:
    small, large = study_peak_bytes(10_000), study_peak_bytes(512 * 512 * 133)
    assert small < large
    assert large - small == pytest.approx(workers.BYTES_PER_VOXEL * (512 * 512 * 133 - 10_000))


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise InputError(f"item {x} is bad")
    return x


@pytest.mark.parametrize("count", [0, 2])
def test_results_come_in_input_order(count: int) -> None:
    items = [5, 1, 4, 2, 3, 0]
    result = map_ordered(_square, items, count)
    assert len(result) == len(items)
    assert list(result) == [25, 1, 16, 4, 9, 0]


@pytest.mark.parametrize("count", [0, 2])
def test_an_error_reaches_the_caller_at_its_turn(count: int) -> None:
    seen = []
    with pytest.raises(InputError, match="item 3 is bad"):
        for value in map_ordered(_fail_on_three, [1, 2, 3, 4], count):
            seen.append(value)
    assert seen == [1, 2]


def test_check_in_workers_reports_what_the_serial_check_does(tmp_path: Path) -> None:
    make_clean(tmp_path)
    for i, fault in enumerate(sorted(IMAGE_FAULTS)):
        IMAGE_FAULTS[fault][0](tmp_path / f"studies/CT-2/study_{90 + i:04d}.nii.gz")
    serial = check_dataset(tmp_path)
    assert len(serial) == len(IMAGE_FAULTS)
    assert check_dataset(tmp_path, workers=2) == serial
