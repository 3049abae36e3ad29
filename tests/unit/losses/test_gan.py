"""Adversarial (LSGAN, hinge) and masked restoration L1 losses against hand values."""

from __future__ import annotations

import pytest
import torch

from volseg.losses import AdversarialLoss, RestorationL1Loss

REAL = torch.tensor([2.0, 0.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.5, 1.5, 0.0])


@pytest.mark.parametrize(
    ("kind", "d_expected", "g_expected"),
    [
        # LSGAN: D = ½ mean((r−1)²) + ½ mean(f²) = ½·(1+1+0.25+4)/4 + ½·(4+0.25+2.25+0)/4
        #        G = ½ mean((f−1)²) = ½·(9+0.25+0.25+1)/4
        ("lsgan", 0.5 * 6.25 / 4 + 0.5 * 6.5 / 4, 0.5 * 10.5 / 4),
        # hinge: D = mean(relu(1−r)) + mean(relu(1+f)) = (0+1+0.5+2)/4 + (0+1.5+2.5+1)/4
        #        G = −mean(f) = −0
        ("hinge", 3.5 / 4 + 5.0 / 4, 0.0),
    ],
)
def test_adversarial_hand_values(kind: str, d_expected: float, g_expected: float) -> None:
    loss = AdversarialLoss(kind)
    assert loss.discriminator_loss(REAL, FAKE).item() == pytest.approx(d_expected)
    assert loss.generator_loss(FAKE).item() == pytest.approx(g_expected)
    assert loss(FAKE).item() == pytest.approx(g_expected)


@pytest.mark.parametrize("kind", ["lsgan", "hinge"])
def test_adversarial_direction_and_gradients(kind: str) -> None:
    loss = AdversarialLoss(kind)
    confident = loss.discriminator_loss(torch.full((4,), 1.0), torch.full((4,), -1.0))
    fooled = loss.discriminator_loss(torch.full((4,), -1.0), torch.full((4,), 1.0))
    assert confident.item() < fooled.item()
    # D(fake) in [-1, 0.8): below the real target, so raising it must lower the G loss.
    fake = (1.8 * torch.rand(2, 1, 3, 3, 3) - 1.0).requires_grad_()
    loss.generator_loss(fake).backward()
    assert torch.isfinite(fake.grad).all()
    assert (fake.grad < 0).all()


def test_adversarial_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        AdversarialLoss("wgan")


def test_restoration_l1_masked_hand_value() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[0.0, 2.0], [5.0, 0.0]]]])
    assert RestorationL1Loss()(pred, target).item() == pytest.approx((1 + 0 + 2 + 4) / 4)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert RestorationL1Loss()(pred, target, mask).item() == pytest.approx((1 + 2) / 2)
    assert RestorationL1Loss(reduction="sum")(pred, target, mask).item() == pytest.approx(3.0)


def test_restoration_l1_mask_broadcasts_over_channels_and_empty_mask() -> None:
    pred = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    target = torch.randn(2, 3, 2, 2, 2)
    mask = torch.zeros(2, 1, 2, 2, 2)
    mask[0, 0, 0] = 1.0
    expected = (pred - target).abs()[0, :, 0].mean()
    assert RestorationL1Loss()(pred, target, mask).item() == pytest.approx(expected.item())
    empty = RestorationL1Loss()(pred, target, torch.zeros(2, 1, 2, 2, 2))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="broadcast"):
        RestorationL1Loss()(pred, target, torch.ones(3, 1, 2, 2, 2))
