"""Lesion burden by hand: volumes, involvement and grade; ground glass vs consolidation."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.quantify import (
    CONSOLIDATION,
    GGO,
    lesion_types,
    quantify,
    spacing_from_affine,
    type_burden,
)


def test_lesion_types_split_at_the_consolidation_density() -> None:
    hu = np.array([[[-850, -650, -201, -200, 40, 40]]], dtype=np.int16)
    lesion = np.array([[[0, 1, 1, 1, 1, 0]]], dtype=np.uint8)
    types = lesion_types(lesion, hu)
    assert types.tolist() == [[[0, GGO, GGO, CONSOLIDATION, CONSOLIDATION, 0]]]
    assert lesion_types(lesion, hu, consolidation_min_hu=0).tolist() == [[[0, 1, 1, 1, 2, 0]]]
    assert types.dtype == np.uint8
    with pytest.raises(ValueError, match=r"^lesion \(1, 1, 6\) and image \(1, 1, 3\) differ$"):
        lesion_types(lesion, hu[..., :3])


def test_lesion_types_in_3d_a_fortran_ordered_scan_and_no_lesion() -> None:
    """Two lesions far apart (one box spans both), dense tissue outside them left 0, on a
    scan in NIfTI's (Fortran) voxel order; no lesion gives all zeros."""
    hu = np.asfortranarray(np.full((12, 10, 6), 50.0, dtype=np.float32))
    lesion = np.zeros(hu.shape, dtype=bool)
    lesion[1, 1, 1] = lesion[10, 8, 4] = lesion[10, 8, 5] = True
    hu[1, 1, 1] = -600.0
    types = lesion_types(lesion, hu)
    expected = np.zeros(hu.shape, dtype=np.uint8)
    expected[1, 1, 1], expected[10, 8, 4], expected[10, 8, 5] = GGO, CONSOLIDATION, CONSOLIDATION
    assert np.array_equal(types, expected)
    assert not lesion_types(np.zeros_like(lesion), hu).any()


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
    # A type map read back from NIfTI comes as floats: the same counts.
    assert type_burden(types.astype(np.float32), 200, (2.0, 2.0, 5.0)) == out


def test_quantify_without_lungs_knows_only_the_lesion_volume() -> None:
    lesion = np.zeros((4, 4, 4), np.uint8)
    lesion[0, 0, :3] = 1  # 3 voxels of 8 mm3
    assert quantify(lesion, None, (2.0, 2.0, 2.0)) == {
        "lesion_volume_ml": pytest.approx(0.024),
        "lung_volume_ml": None,
        "involvement_pct": None,
        "ct_grade": None,
    }


def test_quantify_with_an_empty_or_one_voxel_lung_mask() -> None:
    """No lung voxel: lung volume 0, involvement and grade undefined (no division by zero).
    One lung voxel holding the lesion: 100 % involved, CT-4."""
    lesion = np.zeros((3, 3, 3), bool)
    lesion[1, 1, 1] = True
    lungs = np.zeros_like(lesion)
    q = quantify(lesion, lungs, (1.0, 1.0, 1.0))
    assert (q["lung_volume_ml"], q["involvement_pct"], q["ct_grade"]) == (0.0, None, None)
    q = quantify(lesion, lesion, (10.0, 10.0, 10.0))  # 1 mL voxels
    assert (q["lung_volume_ml"], q["involvement_pct"], q["ct_grade"]) == (1.0, 100.0, 4)


def test_spacing_from_affine_is_per_array_axis() -> None:
    """Axes stored (S, R, P): array axis 0 runs 2 mm along y, axis 1 1 mm along z, axis 2
    3 mm along x, so the spacing is (2, 1, 3) (the row norms would be (3, 2, 1))."""
    affine = np.array(
        [[0.0, 0.0, 3.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, -1.0, 0.0, 1.0], [0, 0, 0, 1]]
    )
    assert spacing_from_affine(affine) == (2.0, 1.0, 3.0)
