"""Realism features against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.evaluation.realism import CORE_MARGIN_MM, features


def _chest(shape=(60, 60, 4), spacing=(1.0, 1.0, 5.0)):
    """Air-filled box with a cubic lung block of -850 HU; RAS affine at ``spacing``."""
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[5:-5, 5:-5, :] = 40.0  # body
    lungs = np.zeros(shape, dtype=bool)
    lungs[10:50, 10:50, :] = True
    hu[lungs] = -850.0
    return hu, lungs, np.diag([*spacing, 1.0])


def test_vessel_density_counts_cross_sections_per_cm2_of_lung_core() -> None:
    hu, lungs, affine = _chest()
    # Core: the 40 x 40 mm lung less 6 mm each side in-plane = 28 x 28 mm on each of 4 slices.
    assert CORE_MARGIN_MM == 6.0
    core_cm2 = 4 * 2.8 * 2.8
    hu[20:22, 20:22, 0] = 0.0  # one vessel on slice 0
    hu[30:33, 25:27, 1:3] = -100.0  # one through-plane vessel: a cross-section on slices 1 and 2
    hu[40:42, 40:43, 3] = 50.0  # one more on slice 3
    hu[24, 24, 3] = -400.0  # below the vessel threshold: not counted
    hu[11, 30, 0] = 100.0  # inside the lung but within 6 mm of its edge: not in the core
    value = features(hu, lungs, affine).vessels_per_cm2
    assert value == pytest.approx(4 / core_cm2)


def test_vessel_density_is_the_same_in_any_voxel_order() -> None:
    hu, lungs, affine = _chest()
    hu[20:22, 20:22, 0] = 0.0
    hu[30:33, 25:27, 1:3] = -100.0
    flipped = np.diag([-1.0, 1.0, 5.0, 1.0])  # LAS: array axis 0 runs right -> left
    a = features(hu, lungs, affine).vessels_per_cm2
    b = features(hu[::-1].copy(), lungs[::-1].copy(), flipped).vessels_per_cm2
    assert a == pytest.approx(b) and a == pytest.approx(3 / (4 * 2.8 * 2.8))
