"""Linear probe: scores, voxel sampling and exact feature lookup at voxel centres."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from volseg.stages.probe import (
    balanced_accuracy,
    encoder_features_at,
    linear_probe,
    probe_representations,
    roc_auc,
    sample_voxels,
    split_probe_volumes,
)


def _gaussian(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_separable_features_give_auc_one() -> None:
    w = torch.linspace(-1.0, 1.0, 16)
    x_train, x_test = _gaussian(600, 16, 0) * 3 + 2, _gaussian(600, 16, 1) * 3 + 2
    y_train = ((x_train - 2) @ w > 0).float()
    y_test = ((x_test - 2) @ w > 0).float()
    result = linear_probe(x_train, y_train, x_test, y_test)
    assert result.auc > 0.99
    assert result.balanced_accuracy > 0.95
    assert (result.n_train, result.n_test, result.n_features) == (600, 600, 16)


def test_random_labels_give_chance() -> None:
    x_train, x_test = _gaussian(1000, 8, 2), _gaussian(3000, 8, 3)
    gen = torch.Generator().manual_seed(4)
    y_train = (torch.rand(1000, generator=gen) < 0.5).float()
    y_test = (torch.rand(3000, generator=gen) < 0.5).float()
    result = linear_probe(x_train, y_train, x_test, y_test)
    assert abs(result.auc - 0.5) < 0.06
    assert abs(result.balanced_accuracy - 0.5) < 0.06


def test_constant_feature_is_harmless() -> None:
    x = torch.cat([_gaussian(200, 1, 5), torch.ones(200, 1)], dim=1)
    y = (x[:, 0] > 0).float()
    result = linear_probe(x, y, x, y)
    assert result.auc > 0.99


def test_scores_on_hand_cases() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    # pairs (pos, neg) ordered correctly: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4) -> 3 of 4
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), labels) == pytest.approx(0.75)
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    pred = torch.tensor([False, True, True, True])
    assert balanced_accuracy(pred, labels) == pytest.approx(0.5 * (1.0 + 0.5))


def test_sample_voxels_balanced_inside_lungs() -> None:
    label = np.zeros((10, 12, 6), np.uint8)
    label[2:4, 2:4, 1:3] = 1  # 8 lesion voxels
    lungs = np.zeros_like(label)
    lungs[1:8, 1:10, :] = 1
    points, y = sample_voxels(label, lungs, 50, np.random.default_rng(0))
    assert points.shape == (16, 3) and y.tolist() == [1.0] * 8 + [0.0] * 8
    values_label = label[tuple(points.T)]
    values_lungs = lungs[tuple(points.T)]
    assert (values_label == y).all()
    assert values_lungs.all()
    points, y = sample_voxels(label, lungs, 3, np.random.default_rng(0))
    assert len(y) == 6 and y.sum() == 3
    empty, y0 = sample_voxels(np.zeros_like(label), lungs, 5, np.random.default_rng(0))
    assert empty.shape == (0, 3) and y0.size == 0


class _PoolingEncoder(nn.Module):
    """A stand-in encoder: the input itself and its 2x / 4x2 average pools."""

    total_stride = (4, 4, 2)

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return [x, F.avg_pool3d(x, 2)], F.avg_pool3d(x, (4, 4, 2))


def test_features_at_voxel_centres_full_resolution_with_padding() -> None:
    # odd sizes: the volume is zero-padded to a multiple of the stride before the encoder
    image = np.random.default_rng(1).random((9, 7, 5)).astype(np.float32)
    points = np.array([[0, 0, 0], [8, 6, 4], [3, 2, 1], [5, 6, 0]])
    feats = encoder_features_at(_PoolingEncoder(), image, points)
    assert feats.shape == (4, 3)
    np.testing.assert_allclose(feats[:, 0].numpy(), image[tuple(points.T)], atol=1e-6)


def test_features_at_downsampled_maps_are_exact_for_a_ramp() -> None:
    # average pools of a linear ramp, read trilinearly at voxel centres, give the ramp back
    i, j, k = np.meshgrid(np.arange(16), np.arange(8), np.arange(4), indexing="ij")
    image = (0.5 * i - 0.25 * j + 1.5 * k).astype(np.float32)
    points = np.array([[2, 2, 1], [5, 3, 2], [9, 4, 1], [12, 5, 2]])  # away from the borders
    feats = encoder_features_at(_PoolingEncoder(), image, points)
    expected = image[tuple(points.T)]
    for column in range(3):
        np.testing.assert_allclose(feats[:, column].numpy(), expected, atol=1e-4)


class _Volume:
    def __init__(self, vid: str, image: np.ndarray, label: np.ndarray | None) -> None:
        self.id = vid
        self._image, self._label = image, label
        self._lungs = np.ones_like(image, dtype=np.uint8)

    def image(self) -> np.ndarray:
        return self._image

    def label(self) -> np.ndarray | None:
        return self._label

    def lungs(self) -> np.ndarray | None:
        return self._lungs


def _lesion_volume(vid: str, seed: int) -> _Volume:
    rng = np.random.default_rng(seed)
    label = np.zeros((16, 16, 8), np.uint8)
    label[4:10, 5:11, 2:6] = 1
    image = (0.2 + 0.05 * rng.standard_normal(label.shape) + 0.4 * label).astype(np.float32)
    return _Volume(vid, image, label)


def test_probe_representations_pairs_voxels_and_scores_each() -> None:
    fit = [_lesion_volume("a", 0), _lesion_volume("b", 1)]
    score = [_lesion_volume("c", 2)]
    fns = {
        "intensity": lambda img, pts: torch.from_numpy(img[tuple(pts.T)])[:, None],
        "noise": lambda img, pts: torch.randn(
            len(pts), 4, generator=torch.Generator().manual_seed(0)
        ),
    }
    results = probe_representations(fit, score, fns, n_per_class=100, seed=0)
    assert results["intensity"].auc > 0.99
    assert abs(results["noise"].auc - 0.5) < 0.15
    assert results["intensity"].n_train == results["noise"].n_train == 400
    assert results["intensity"].n_test == 200


def test_split_probe_volumes() -> None:
    a, b, c = _lesion_volume("a", 0), _lesion_volume("b", 1), _lesion_volume("c", 2)
    unlabeled = _Volume("u", a.image(), None)
    fit, score, how = split_probe_volumes([a, unlabeled, b], [c])
    assert [v.id for v in fit] == ["a", "b"] and [v.id for v in score] == ["c"] and "val" in how
    fit, score, _ = split_probe_volumes([a, b], [unlabeled])
    assert {v.id for v in fit} | {v.id for v in score} == {"a", "b"}
    assert not {v.id for v in fit} & {v.id for v in score}
    assert split_probe_volumes([a], [unlabeled]) is None
