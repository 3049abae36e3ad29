"""Residual maps: sign, lung restriction, border-preserving smoothing, soft map, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from volseg.pseudo.residual import residual_map, restore_volume, soft_map


def test_only_positive_residual_inside_lungs_is_kept() -> None:
    image = np.full((6, 6, 4), 0.5, np.float32)
    restored = image.copy()
    image[1, 1, 1] = 0.9  # brighter than healthy: lesion
    image[2, 2, 2] = 0.1  # darker than healthy: not a lesion
    image[5, 5, 3] = 0.9  # bright but outside the lungs
    lungs = np.ones_like(image, dtype=np.uint8)
    lungs[5] = 0
    r = residual_map(image, restored, lungs, (1, 1, 1), sigma_mm=0.0)
    expected = np.zeros_like(image)
    expected[1, 1, 1] = 0.4
    np.testing.assert_allclose(r, expected, atol=1e-6)


def test_smoothing_is_normalised_by_the_lungs() -> None:
    # A constant residual over the lungs stays constant up to the lung border.
    shape = (20, 20, 10)
    lungs = np.zeros(shape, bool)
    lungs[3:12, 4:15, 2:8] = True
    image = np.where(lungs, 0.7, 0.2).astype(np.float32)
    restored = np.where(lungs, 0.5, 0.2).astype(np.float32)
    r = residual_map(image, restored, lungs, (1.5, 1.5, 5.0), sigma_mm=3.0)
    np.testing.assert_allclose(r[lungs], 0.2, atol=1e-5)
    assert np.all(r[~lungs] == 0)


def test_residual_map_checks_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        residual_map(np.zeros((4, 4, 4)), np.zeros((4, 4, 3)), np.ones((4, 4, 4)), (1, 1, 1), 1.0)


def test_soft_map_half_level_is_the_threshold() -> None:
    r = np.array([0.0, 0.05, 0.1, 0.2, 0.5], np.float32)
    np.testing.assert_allclose(soft_map(r, 0.1), [0.0, 0.25, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError):
        soft_map(r, 0.0)


class _Darken(nn.Module):
    """Stands in for a generator: halves every intensity above 0.5 (shape-preserving)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0.5, x * 0.5, x)


def test_restore_volume_tiles_a_whole_volume() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, size=(23, 19, 9)).astype(np.float32)
    net = _Darken().train()
    out = restore_volume(net, image, (8, 8, 4), overlap=0.25, sw_batch_size=3)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, np.where(image > 0.5, image * 0.5, image), atol=1e-5)
    assert net.training  # the caller's mode is restored
