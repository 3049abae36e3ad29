"""A capped sample of scans spreads over the whole sorted list."""

from __future__ import annotations

from volseg.utils import evenly_spaced


def test_a_capped_sample_spreads_over_the_whole_list() -> None:
    ids = [f"study_{i:04d}" for i in range(10)]
    assert evenly_spaced(ids, 32) == ids  # under the cap: all of them
    assert evenly_spaced(ids, 5) == ids[::2]
    assert evenly_spaced(ids, 4) == ["study_0000", "study_0003", "study_0006", "study_0009"]
    assert evenly_spaced(ids, 3) == ["study_0000", "study_0004", "study_0008"]
    assert evenly_spaced([], 3) == []
