"""Sensitivity BCE, probability MSE, soft Dice and the combined fine-tuning loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from volseg.losses import FinetuneLoss, ProbabilityMSELoss, SensitivityBCELoss, SoftDiceLoss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def reference_sensitivity_bce(logits: list[float], target: list[float], beta: float) -> list[float]:
    out = []
    for x, y in zip(logits, target, strict=True):
        p = sigmoid(x)
        bce = -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))
        out.append(bce * (1.0 + beta * (1.0 - p) * y))
    return out


def _volume(seed: int, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(2, 1, 3, 4, 4, generator=g, dtype=torch.float64)
    target = torch.rand(2, 1, 3, 4, 4, generator=g, dtype=torch.float64)
    return logits, target if soft else (target > 0.6).to(torch.float64)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 5.5])
@pytest.mark.parametrize("soft", [False, True])
def test_sensitivity_bce_matches_formula(beta: float, soft: bool) -> None:
    logits, target = _volume(int(beta * 10), soft)
    per_voxel = SensitivityBCELoss(beta=beta, reduction="none")(logits, target)
    expected = reference_sensitivity_bce(logits.flatten().tolist(), target.flatten().tolist(), beta)
    assert per_voxel.flatten().tolist() == pytest.approx(expected, rel=1e-10)
    mean = SensitivityBCELoss(beta=beta)(logits, target)
    assert mean.item() == pytest.approx(sum(expected) / len(expected), rel=1e-10)
    total = SensitivityBCELoss(beta=beta, reduction="sum")(logits, target)
    assert total.item() == pytest.approx(sum(expected), rel=1e-10)


def test_sensitivity_bce_hand_value_and_beta_zero_is_bce() -> None:
    # logit 0, y = 1: p = ½, BCE = ln 2, factor 1 + 2·½ = 2 → 2 ln 2.
    one = SensitivityBCELoss(beta=2.0)(torch.zeros(1), torch.ones(1))
    assert one.item() == pytest.approx(2.0 * math.log(2.0), rel=1e-7)
    logits, target = _volume(1, soft=True)
    plain = F.binary_cross_entropy_with_logits(logits, target)
    assert SensitivityBCELoss(beta=0.0)(logits, target).item() == pytest.approx(plain.item())


@pytest.mark.parametrize("confidence", [0.5, 2.0, 6.0])
def test_false_negative_costs_more_than_false_positive(confidence: float) -> None:
    loss = SensitivityBCELoss(beta=2.0, reduction="none")
    false_negative = loss(torch.tensor([-confidence]), torch.tensor([1.0]))
    false_positive = loss(torch.tensor([confidence]), torch.tensor([0.0]))
    ratio = (false_negative / false_positive).item()
    assert ratio == pytest.approx(1.0 + 2.0 * sigmoid(confidence), rel=1e-5)
    assert ratio > 1.0


def test_weights_scale_as_documented() -> None:
    logits, target = _volume(3)
    loss = SensitivityBCELoss(beta=2.0)
    base = loss(logits, target)
    assert loss(logits, target, torch.full_like(target, 0.5)).item() == pytest.approx(
        0.5 * base.item()
    )
    assert loss(logits, target, torch.zeros_like(target)).item() == 0.0
    # per-volume (B,) weights equal the same weights spread over voxels; mean = Σ w·l / numel
    per_volume = torch.tensor([1.0, 0.25], dtype=torch.float64)
    voxelwise = per_volume.reshape(2, 1, 1, 1, 1).expand_as(target)
    by_volume = loss(logits, target, per_volume)
    assert by_volume.item() == pytest.approx(loss(logits, target, voxelwise).item())
    per_voxel = SensitivityBCELoss(beta=2.0, reduction="none")(logits, target)
    expected = (per_voxel[0].sum() + 0.25 * per_voxel[1].sum()) / per_voxel.numel()
    assert by_volume.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="non-negative"):
        loss(logits, target, -torch.ones_like(target))
    with pytest.raises(ValueError, match="broadcast"):
        loss(logits, target, torch.ones(3))


def test_mse_on_probabilities() -> None:
    logits, target = _volume(4, soft=True)
    expected = [
        (sigmoid(x) - y) ** 2
        for x, y in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True)
    ]
    assert ProbabilityMSELoss()(logits, target).item() == pytest.approx(
        sum(expected) / len(expected), rel=1e-10
    )
    half = ProbabilityMSELoss()(logits, target, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert half.item() == pytest.approx(0.5 * sum(expected) / len(expected), rel=1e-10)


def test_soft_dice_hand_value_and_monai() -> None:
    from monai.losses import DiceLoss

    # p = sigmoid(0) = ½ on 4 voxels, y = (1, 1, 0, 0): Dice = 1 − (2·1 + s)/(2 + 2 + s).
    logits = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)
    s = 1e-5
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(1 - (2 + s) / (4 + s))
    logits, target = _volume(5)
    ours = SoftDiceLoss()(logits, target)
    assert ours.item() == pytest.approx(DiceLoss(sigmoid=True)(logits, target).item(), rel=1e-10)
    per_volume = SoftDiceLoss(reduction="none")(logits, target)
    weighted = SoftDiceLoss()(logits, target, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert weighted.item() == pytest.approx(per_volume[0].item() / 2)
    voxel_weight = torch.ones_like(target)
    voxel_weight[1] = 0.5
    weighted = SoftDiceLoss()(logits, target, voxel_weight)
    assert weighted.item() == pytest.approx((per_volume[0] + 0.5 * per_volume[1]).item() / 2)


@pytest.mark.parametrize("fill", [0.0, 1.0])
@pytest.mark.parametrize(
    "loss_fn",
    [SensitivityBCELoss(), ProbabilityMSELoss(), SoftDiceLoss()],
    ids=["bce", "mse", "dice"],
)
def test_one_class_targets_are_finite(loss_fn: torch.nn.Module, fill: float) -> None:
    for scale in (0.0, 30.0, -30.0):
        logits = (scale * torch.ones(2, 1, 3, 4, 4)).requires_grad_()
        loss = loss_fn(logits, torch.full((2, 1, 3, 4, 4), fill))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def _finetune_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 4, 6, 6, generator=g, requires_grad=True)
    target = torch.zeros(2, 1, 4, 6, 6)
    target[:, :, 1:3, 2:5, 2:5] = 1.0
    embeddings = torch.randn(2, 8, 4, 6, 6, generator=g, requires_grad=True)
    return logits, target, embeddings


def test_finetune_terms_sum_to_total() -> None:
    logits, target, emb = _finetune_inputs()
    loss_fn = FinetuneLoss(
        dice_weight=1.0, bce_weight=0.7, mse_weight=0.5, supcon_weight=0.3, max_per_class=8
    )
    weight = torch.tensor([1.0, 0.5])
    total, terms = loss_fn(logits, target, emb, weight, generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"dice", "bce", "mse", "supcon"}
    weights = {"dice": 1.0, "bce": 0.7, "mse": 0.5, "supcon": 0.3}
    assert total.item() == pytest.approx(
        sum(weights[k] * float(v) for k, v in terms.items()), rel=1e-6
    )
    assert float(terms["bce"]) == pytest.approx(SensitivityBCELoss()(logits, target, weight).item())
    assert float(terms["dice"]) == pytest.approx(SoftDiceLoss()(logits, target, weight).item())
    assert all(v > 0 for v in terms.values())
    total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0


def test_finetune_skips_supcon_and_zero_weight_terms() -> None:
    logits, target, emb = _finetune_inputs(1)
    total, terms = FinetuneLoss(mse_weight=0.0)(logits, target)
    assert set(terms) == {"dice", "bce"}
    assert total.item() == pytest.approx(float(terms["dice"]) + float(terms["bce"]), rel=1e-6)
    _, terms = FinetuneLoss(supcon_weight=0.0)(logits, target, emb)
    assert "supcon" not in terms
    with pytest.raises(ValueError, match="needs embeddings"):
        FinetuneLoss(dice_weight=0, bce_weight=0, mse_weight=0, supcon_weight=1)(logits, target)


def test_finetune_all_zero_target_is_finite() -> None:
    logits, _, emb = _finetune_inputs(2)
    total, terms = FinetuneLoss(max_per_class=8)(logits, torch.zeros(2, 1, 4, 6, 6), emb)
    total.backward()
    assert float(terms["supcon"]) == 0.0
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SensitivityBCELoss, {"beta": -1.0}),
        (SensitivityBCELoss, {"reduction": "avg"}),
        (ProbabilityMSELoss, {"reduction": "max"}),
        (SoftDiceLoss, {"smooth": 0.0}),
        (FinetuneLoss, {"bce_weight": -1.0}),
        (FinetuneLoss, {"dice_weight": 0, "bce_weight": 0, "mse_weight": 0, "supcon_weight": 0}),
        (FinetuneLoss, {"temperature": 0.0}),
    ],
)
def test_rejects_bad_arguments(cls: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differs"):
        SensitivityBCELoss()(torch.zeros(2, 1, 3), torch.zeros(2, 1, 4))
