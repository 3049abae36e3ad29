"""Barlow Twins loss against a plain-loop float64 reference and MONAI's implementation."""

from __future__ import annotations

import math

import pytest
import torch

from volseg.losses import BarlowTwinsLoss


def reference_barlow(z1: list[list[float]], z2: list[list[float]], lam: float, eps: float) -> float:
    """The formula with Python loops: biased batch variance, C = ẑ1ᵀẑ2 / N, diag + λ·offdiag."""
    n, d = len(z1), len(z1[0])

    def normalise(z: list[list[float]]) -> list[list[float]]:
        out = [[0.0] * d for _ in range(n)]
        for k in range(d):
            mean = sum(z[s][k] for s in range(n)) / n
            var = sum((z[s][k] - mean) ** 2 for s in range(n)) / n
            for s in range(n):
                out[s][k] = (z[s][k] - mean) / math.sqrt(var + eps)
        return out

    a, b = normalise(z1), normalise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[s][i] * b[s][j] for s in range(n)) / n
            loss += (1.0 - c_ij) ** 2 if i == j else lam * c_ij**2
    return loss


@pytest.mark.parametrize(
    ("n", "d", "lam", "eps", "seed"),
    [(2, 3, 5e-3, 1e-5, 0), (4, 4, 5e-3, 0.0, 1), (7, 5, 0.1, 1e-5, 2), (16, 8, 1.0, 1e-3, 3)],
)
def test_matches_loop_reference(n: int, d: int, lam: float, eps: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    got = BarlowTwinsLoss(lambda_offdiag=lam, eps=eps)(z1, z2)
    assert got.dtype == torch.float64
    expected = reference_barlow(z1.tolist(), z2.tolist(), lam, eps)
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_hand_computed_two_samples() -> None:
    # N=2: every normalised column is (-1, +1) or (+1, -1), so C_ij = ±1 by sign agreement.
    z1 = torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    # ẑ1 = [[-1, 1], [1, -1]], ẑ2 = [[-1, -1], [1, 1]] → C = [[1, 1], [-1, -1]]
    # diag: (1-1)² + (1-(-1))² = 4; offdiag: 1 + 1 = 2 → 4 + 0.5·2 = 5
    loss = BarlowTwinsLoss(lambda_offdiag=0.5, eps=0.0)(z1, z2)
    assert float(loss) == pytest.approx(5.0, abs=1e-12)


def test_identical_decorrelated_views_give_zero() -> None:
    # Columns with zero mean, equal norms and orthogonal → C = I exactly → loss 0.
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert float(BarlowTwinsLoss(eps=0.0)(z, z)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("n", "d", "seed"), [(4, 3, 0), (9, 6, 1), (32, 5, 2)])
def test_relation_to_monai(n: int, d: int, seed: int) -> None:
    """MONAI normalises with the unbiased std (+1e-6): C_monai = C · (N-1)/N."""
    from monai.losses import BarlowTwinsLoss as MonaiBarlowTwins

    lam = 5e-3
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + torch.randn(n, d, generator=g, dtype=torch.float64)
    ours = BarlowTwinsLoss(lambda_offdiag=lam, eps=0.0)
    c = ours.cross_correlation(z1, z2) * (n - 1) / n
    eye = torch.eye(d, dtype=torch.bool)
    rescaled = (1 - c.diagonal()).pow(2).sum() + lam * c.pow(2)[~eye].sum()
    monai_value = MonaiBarlowTwins(lambd=lam)(z1, z2)
    assert float(monai_value) == pytest.approx(float(rescaled), rel=1e-4)
    # ... and the two definitions really differ unless the factor is applied.
    assert float(monai_value) != pytest.approx(float(ours(z1, z2)), rel=1e-3)


def test_gradients_finite_and_match_float64() -> None:
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = BarlowTwinsLoss()(z1, z2)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert torch.autograd.gradcheck(lambda a, b: BarlowTwinsLoss()(a, b), (z1, z2))


def test_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(6)
    z1 = torch.randn(8, 4, generator=g)
    z2 = torch.randn(8, 4, generator=g)
    expected = BarlowTwinsLoss()(z1, z2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = BarlowTwinsLoss()(z1, z2)
        got_half_inputs = BarlowTwinsLoss()(z1.bfloat16(), z2.bfloat16())
    assert got.dtype == torch.float32 and got_half_inputs.dtype == torch.float32
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    assert float(got_half_inputs) == pytest.approx(float(expected), rel=5e-2)


def test_constant_embedding_is_finite() -> None:
    z = torch.ones(4, 3, requires_grad=True)
    loss = BarlowTwinsLoss()(z, z)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("kwargs", [{"lambda_offdiag": -1.0}, {"eps": -1e-5}])
def test_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BarlowTwinsLoss(**kwargs)


def test_rejects_bad_shapes() -> None:
    loss = BarlowTwinsLoss()
    with pytest.raises(ValueError, match="batch of at least 2"):
        loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="differs"):
        loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        loss(torch.randn(4, 3, 2), torch.randn(4, 3, 2))
