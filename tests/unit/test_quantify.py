"""Ground glass vs consolidation: the density rule and the burden it reports, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.quantify import CONSOLIDATION, GGO, lesion_types, type_burden


def test_lesion_types_split_at_the_consolidation_density() -> None:
    hu = np.array([[[-850, -650, -201, -200, 40, 40]]], dtype=np.int16)
    lesion = np.array([[[0, 1, 1, 1, 1, 0]]], dtype=np.uint8)
    types = lesion_types(lesion, hu)
    assert types.tolist() == [[[0, GGO, GGO, CONSOLIDATION, CONSOLIDATION, 0]]]
    assert lesion_types(lesion, hu, consolidation_min_hu=0).tolist() == [[[0, 1, 1, 1, 2, 0]]]
    with pytest.raises(ValueError, match="differ"):
        lesion_types(lesion, hu[..., :3])


def test_type_burden_in_ml_and_percent_of_lung() -> None:
    types = np.zeros((10, 10, 10), dtype=np.uint8)
    types[:3, :2, :1] = GGO  # 6 voxels
    types[5, 5, :4] = CONSOLIDATION  # 4 voxels
    out = type_burden(types, lung_voxels=200, spacing_mm=(2.0, 2.0, 5.0))  # 20 mm3 voxels
    assert out == {
        "ggo_ml": pytest.approx(0.12),
        "ggo_pct": pytest.approx(3.0),
        "consolidation_ml": pytest.approx(0.08),
        "consolidation_pct": pytest.approx(2.0),
    }
    assert type_burden(types, None, (2.0, 2.0, 5.0))["ggo_pct"] is None
