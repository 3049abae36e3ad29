"""SE and SSR recalibration: exact values, known local dimensions, dtypes, gradients, factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from volseg.models.recalibration import (
    RECALIBRATIONS,
    SingularityStrengthRecalibration3D,
    SqueezeExcitation3D,
    box_sum3d,
    local_singularity_strength,
    make_recalibration,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
R = 4  # largest default radius: voxels closer than this to a border or structure are skipped


def test_se_equals_direct_computation() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation3D(16, reduction=4)
    x = torch.randn(2, 16, 5, 6, 7)
    pooled = x.sum(dim=(2, 3, 4)) / (5 * 6 * 7)
    hidden = torch.clamp(pooled @ se.fc1.weight.T + se.fc1.bias, min=0)
    gate = 1 / (1 + torch.exp(-(hidden @ se.fc2.weight.T + se.fc2.bias)))
    expected = x * gate.view(2, 16, 1, 1, 1)
    assert se.fc1.out_features == 4
    torch.testing.assert_close(se(x), expected, rtol=1e-5, atol=1e-6)


def test_box_sum_matches_brute_force() -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 2, 6, 5, 7)
    for r in (1, 2, 4):
        k = 2 * r + 1
        padded = F.pad(x, [r] * 6)
        brute = padded.unfold(2, k, 1).unfold(3, k, 1).unfold(4, k, 1).sum(dim=(-3, -2, -1))
        # avg_pool3d's own padding refuses kernels longer than the input; pad by hand.
        pooled = F.avg_pool3d(padded, k, stride=1) * k**3
        torch.testing.assert_close(box_sum3d(x, r), brute, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(box_sum3d(x, r), pooled, rtol=1e-5, atol=1e-5)


def _structures(n: int = 21) -> torch.Tensor:
    """Channels: constant 2.5 (dimension 3), a plane (2), a line (1), a point mass (0)."""
    c = n // 2
    field = torch.zeros(1, 4, n, n, n)
    field[0, 0] = 2.5
    field[0, 1, c, :, :] = 0.7
    field[0, 2, c, c, :] = 3.0
    field[0, 3, c, c, c] = 5.0
    return field


@pytest.mark.parametrize("device", DEVICES)
def test_alpha_equals_local_dimension(device: str) -> None:
    n = 21
    c = n // 2
    inner = slice(R, n - R)
    alpha = local_singularity_strength(_structures(n).to(device)).cpu()[0]
    assert alpha.dtype == torch.float32
    cases = {
        "constant": (alpha[0, inner, inner, inner], 3.0),
        "plane": (alpha[1, c, inner, inner], 2.0),
        "line": (alpha[2, c, c, inner], 1.0),
        "point": (alpha[3, c, c, c], 0.0),
    }
    for name, (values, truth) in cases.items():
        err = (values - truth).abs().max().item()
        assert err < 1e-3, f"{name}: alpha off by {err}"


def test_alpha_scale_invariant_and_zero_on_empty() -> None:
    torch.manual_seed(2)
    m = torch.rand(1, 1, 12, 12, 12) + 0.1
    a1 = local_singularity_strength(m)
    a2 = local_singularity_strength(m * 40.0)
    torch.testing.assert_close(a1, a2, rtol=0, atol=1e-4)
    assert local_singularity_strength(torch.zeros(1, 1, 9, 9, 9)).abs().max().item() < 1e-6


def test_alpha_varies_across_a_random_field() -> None:
    # H < 12: dense random mass (dimension 3); H >= 12: empty except a random-weighted sheet
    # at D = 8 (dimension 2). Random weights make the power law approximate, hence 0.25.
    torch.manual_seed(3)
    m = torch.zeros(1, 1, 17, 24, 16)
    m[..., :12, :] = 1.0 + torch.rand(1, 1, 17, 12, 16)
    m[..., 8, 12:, :] = 1.0 + torch.rand(1, 1, 12, 16)
    alpha = local_singularity_strength(m)[0, 0]
    dense = alpha[R : 17 - R, R : 12 - R, R : 16 - R]
    sheet = alpha[8, 12 + R : 24 - R, R : 16 - R]
    assert (dense - 3).abs().max().item() < 0.25
    assert (sheet - 2).abs().max().item() < 0.25
    assert abs(dense.mean().item() - 3) < 0.05
    assert abs(sheet.mean().item() - 2) < 0.05


def test_alpha_rejects_bad_arguments() -> None:
    m = torch.rand(1, 1, 5, 5, 5)
    with pytest.raises(ValueError, match="radii"):
        local_singularity_strength(m, radii=(2, 2))
    with pytest.raises(ValueError, match="radii"):
        local_singularity_strength(m, radii=(0, 1))
    with pytest.raises(ValueError, match="eps"):
        local_singularity_strength(m, eps=0.0)
    with pytest.raises(ValueError, match="measure_input"):
        local_singularity_strength(m[0])


@pytest.mark.parametrize("device", DEVICES)
def test_ssr_forward_matches_definition_at_odd_size(device: str) -> None:
    torch.manual_seed(4)
    ssr = SingularityStrengthRecalibration3D(4, radii=(1, 2, 3)).to(device)
    x = torch.randn(1, 4, 13, 11, 7, device=device)
    torch.testing.assert_close(ssr(x), 0.5 * x)  # gate starts at exactly 0.5
    with torch.no_grad():
        ssr.affine.weight.copy_(torch.tensor([0.5, -1.0, 0.2, 2.0]).view(4, 1, 1, 1, 1))
        ssr.affine.bias.copy_(torch.tensor([0.1, 0.0, -0.3, -2.0]))
    a = ssr.affine.weight.view(1, 4, 1, 1, 1)
    b = ssr.affine.bias.view(1, 4, 1, 1, 1)
    expected = x * torch.sigmoid(a * local_singularity_strength(x.abs(), (1, 2, 3)) + b)
    out = ssr(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_ssr_gradients_flow_and_stay_finite_near_zero() -> None:
    torch.manual_seed(5)
    ssr = SingularityStrengthRecalibration3D(3)
    with torch.no_grad():
        ssr.affine.weight.fill_(0.7)
    x = torch.randn(2, 3, 9, 8, 7)
    x[:, :, :4] = 0.0  # exact zeros and tiny values: log(mu + eps) is steep there
    x[:, :, 4] *= 1e-7
    # Checkerboard of -1 and +1e-7: a relu measure would be ~1e-6 around the -1 voxels.
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (4, 8, 7)], indexing="ij"))
    x[:, :, 5:] = torch.where(grid.sum(0) % 2 == 0, -1.0, 1e-7)
    x.requires_grad_(True)
    ssr(x).square().sum().backward()
    for name, grad in [
        ("x", x.grad),
        ("weight", ssr.affine.weight.grad),
        ("bias", ssr.affine.bias.grad),
    ]:
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    assert x.grad.abs().max().item() < 1e3


@pytest.mark.parametrize("module_cls", [SqueezeExcitation3D, SingularityStrengthRecalibration3D])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_autocast_keeps_input_dtype(module_cls: type[nn.Module], in_dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    module = module_cls(8)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(1, 8, 7, 6, 5).to(in_dtype)
    reference = module(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == in_dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_make_recalibration() -> None:
    assert RECALIBRATIONS == ("none", "se", "ssr")
    assert isinstance(make_recalibration("none", 8), nn.Identity)
    assert isinstance(make_recalibration("se", 8), SqueezeExcitation3D)
    assert isinstance(make_recalibration("ssr", 8), SingularityStrengthRecalibration3D)
    for kind in RECALIBRATIONS:
        x = torch.randn(1, 8, 5, 5, 5)
        assert make_recalibration(kind, 8)(x).shape == x.shape
    with pytest.raises(ValueError, match="did you mean 'ssr'"):
        make_recalibration("srr", 8)
    with pytest.raises(ValueError, match="choose from none, se, ssr"):
        make_recalibration("attention", 8)
    with pytest.raises(ValueError, match="channels"):
        make_recalibration("se", 0)
    with pytest.raises(ValueError, match="reduction"):
        SqueezeExcitation3D(8, reduction=0)
    with pytest.raises(ValueError, match="expects"):
        SqueezeExcitation3D(8)(torch.randn(1, 4, 3, 3, 3))
