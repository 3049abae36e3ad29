"""Supervised contrastive loss against a double-loop reference, and the voxel sampler."""

from __future__ import annotations

import math

import pytest
import torch

from volseg.losses import SupConVoxelLoss, boundary_bands, supcon_from_features


def reference_supcon(
    feats: list[list[float]], labels: list[int], tau: float, weights: list[float] | None = None
) -> float:
    """Khosla et al. L_out with plain loops; anchors without positives skipped."""
    n = len(feats)
    unit = []
    for f in feats:
        norm = math.sqrt(sum(v * v for v in f))
        unit.append([v / norm for v in f])

    def sim(i: int, j: int) -> float:
        return sum(a * b for a, b in zip(unit[i], unit[j], strict=True)) / tau

    total, count = 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(sim(i, a)) for a in range(n) if a != i)
        term = -sum(math.log(math.exp(sim(i, p)) / denom) for p in positives) / len(positives)
        total += term * (1.0 if weights is None else weights[i])
        count += 1
    return total / count if count else 0.0


@pytest.mark.parametrize(
    ("n", "e", "tau", "n_classes", "seed"),
    [(4, 2, 0.1, 2, 0), (9, 3, 0.5, 2, 1), (12, 5, 1.0, 3, 2), (20, 8, 0.07, 2, 3)],
)
def test_matches_double_loop(n: int, e: int, tau: float, n_classes: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, e, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % n_classes
    got = supcon_from_features(feats, labels, tau)
    expected = reference_supcon(feats.tolist(), labels.tolist(), tau)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_hand_computed_four_points() -> None:
    # Two classes on orthogonal axes; a pair per class, identical within the class.
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # For every anchor: s(pos) = 1/τ, s(neg) = 0 twice → ℓ = -log(e^{1/τ} / (e^{1/τ} + 2)).
    tau = 0.5
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert float(supcon_from_features(feats, labels, tau)) == pytest.approx(expected, rel=1e-12)


def test_anchor_weights_and_skipped_anchors() -> None:
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(7, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # the lone class-2 sample has no positive
    weights = torch.tensor([1.0, 0.5, 0.0, 1.0, 2.0, 1.0, 3.0], dtype=torch.float64)
    got = supcon_from_features(feats, labels, 0.2, weights)
    expected = reference_supcon(feats.tolist(), labels.tolist(), 0.2, weights.tolist())
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_no_positive_anchor_is_exact_zero_with_grad() -> None:
    feats = torch.randn(3, 4, requires_grad=True)
    loss = supcon_from_features(feats, torch.tensor([0, 1, 2]), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_gradients_finite_and_gradcheck() -> None:
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda f: supcon_from_features(f, labels, 0.3), (feats,))


def _toy_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(2, 4, 6, 6, 6, generator=g, requires_grad=True)
    labels = torch.zeros(2, 1, 6, 6, 6)
    labels[0, 0, 1:4, 1:4, 1:4] = 1.0
    labels[1, 0, 2:5, 2:5, 3:6] = 0.8  # soft, above the 0.5 threshold
    return emb, labels


def test_module_equals_pure_function_on_its_sample() -> None:
    emb, labels = _toy_batch()
    loss_fn = SupConVoxelLoss(temperature=0.2, max_per_class=5, hard_fraction=0.4)
    feats, labs, _ = loss_fn.sample(emb, labels, generator=torch.Generator().manual_seed(9))
    got = loss_fn(emb, labels, generator=torch.Generator().manual_seed(9))
    assert labs.tolist().count(1) == 10 and labs.tolist().count(0) == 10
    assert got.item() == pytest.approx(supcon_from_features(feats, labs, 0.2).item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_sampling_is_deterministic_under_manual_seed() -> None:
    emb, labels = _toy_batch()
    loss_fn = SupConVoxelLoss(max_per_class=4)
    torch.manual_seed(123)
    first = loss_fn(emb, labels)
    torch.manual_seed(123)
    second = loss_fn(emb, labels)
    torch.manual_seed(124)
    third = loss_fn(emb, labels)
    assert first.item() == second.item()
    assert first.item() != third.item()


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_one_class_only_is_exact_zero(fill: float) -> None:
    emb, _ = _toy_batch()
    labels = torch.full((2, 1, 6, 6, 6), fill)
    loss = SupConVoxelLoss()(emb, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_empty_valid_mask_is_exact_zero() -> None:
    emb, labels = _toy_batch()
    loss = SupConVoxelLoss()(emb, labels, valid_mask=torch.zeros_like(labels))
    assert loss.item() == 0.0 and loss.requires_grad


def test_hard_examples_come_from_boundary_bands() -> None:
    emb, labels = _toy_batch()
    lesion = labels > 0.5
    inner, outer = boundary_bands(lesion, 1)
    # 3x3x3 cube: the rim is the 26 non-centre voxels; the ring is the 5x5x5 shell (98).
    assert int(inner[0].sum()) == 26 and int(outer[0].sum()) == 125 - 27
    emb_ids = torch.arange(6 * 6 * 6, dtype=torch.float32).reshape(1, 1, 6, 6, 6)
    emb_ids = emb_ids.expand(2, 1, 6, 6, 6)
    loss_fn = SupConVoxelLoss(max_per_class=8, hard_fraction=1.0)
    feats, labs, _ = loss_fn.sample(emb_ids, labels, generator=torch.Generator().manual_seed(0))
    ids = feats[:, 0].long()
    assert len(ids) == 32
    for k, (idx, lab) in enumerate(zip(ids.tolist(), labs.tolist(), strict=True)):
        volume = 0 if k < 16 else 1
        band = inner if lab == 1 else outer
        assert bool(band[volume].flatten()[idx])


def test_weights_and_valid_mask_restrict_sampling() -> None:
    emb, labels = _toy_batch()
    emb_ids = torch.arange(216, dtype=torch.float32).reshape(1, 1, 6, 6, 6).expand(2, 1, 6, 6, 6)
    weights = torch.ones_like(labels)
    weights[:, :, :3] = 0.0  # first three slices never sampled
    weights[:, :, 3:] = 0.5
    valid = torch.ones_like(labels)
    valid[:, :, :, :, 5] = 0.0
    loss_fn = SupConVoxelLoss(max_per_class=1000, hard_fraction=0.5)
    feats, labs, wts = loss_fn.sample(emb_ids, labels, weights, valid)
    ids = feats[:, 0].long()
    assert bool((ids // 36 >= 3).all()) and bool((ids % 6 != 5).all())
    assert torch.equal(wts, torch.full_like(wts, 0.5))
    assert len(ids) == 2 * 3 * 6 * 5  # every eligible voxel once (K is larger), no repeats
    assert len(set(zip(ids.tolist(), [k // 90 for k in range(180)], strict=True))) == 180


def test_coarse_embedding_grid() -> None:
    emb = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    _, labels = _toy_batch()
    loss = SupConVoxelLoss(max_per_class=4)(emb, labels, torch.full_like(labels, 0.5))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_float32_under_autocast() -> None:
    emb, labels = _toy_batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = SupConVoxelLoss(max_per_class=4)(emb.bfloat16(), labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"max_per_class": 0},
        {"max_per_class": 2.5},
        {"hard_fraction": 1.5},
        {"boundary_radius": 0},
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SupConVoxelLoss(**kwargs)


def test_rejects_bad_shapes() -> None:
    emb, labels = _toy_batch()
    with pytest.raises(ValueError, match="labels"):
        SupConVoxelLoss()(emb, labels[:1])
    with pytest.raises(ValueError, match="temperature"):
        supcon_from_features(torch.randn(3, 2), torch.tensor([0, 1, 0]), -1.0)
