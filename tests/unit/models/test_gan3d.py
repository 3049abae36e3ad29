"""GAN generator/discriminator and projection heads."""

from __future__ import annotations

import pytest
import torch

from volseg.models import (
    Generator3D,
    PatchDiscriminator3D,
    ProjectorHead,
    VoxelProjectionHead,
)

TINY_G = dict(widths=(4, 8, 16), strides=((2, 2, 1), (2, 2, 2)))


@pytest.mark.parametrize("size", [(32, 32, 16), (61, 70, 19)])
def test_generator_starts_as_identity_and_keeps_size(size: tuple[int, int, int]) -> None:
    gen = Generator3D(**TINY_G)
    x = torch.rand(2, 1, *size)
    out = gen(x)
    assert out.shape == x.shape
    assert torch.equal(out, x)


def test_generator_output_clamped_with_gradient() -> None:
    gen = Generator3D(**TINY_G)
    torch.nn.init.normal_(gen.delta.weight, std=5.0)
    x = torch.rand(1, 1, 16, 16, 8)
    out = gen(x)
    assert out.min() >= 0.0 and out.max() <= 1.0
    out.sum().backward()
    missing = [n for n, p in gen.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_discriminator_gives_patch_logits() -> None:
    disc = PatchDiscriminator3D(widths=(4, 8, 8, 16))
    logits = disc(torch.rand(2, 1, 64, 64, 32))
    assert logits.shape == (2, 1, 8, 8, 8)  # total stride (8, 8, 4)
    logits.mean().backward()
    assert all(p.grad is not None for p in disc.parameters() if p.requires_grad)
    assert PatchDiscriminator3D(widths=(4, 8, 8, 16))(torch.rand(1, 1, 61, 70, 19)).ndim == 5


def test_projector_head_shapes_and_structure() -> None:
    head = ProjectorHead(16, dims=(32, 32, 8))
    assert head(torch.rand(4, 16, 3, 3, 2)).shape == (4, 8)
    assert head(torch.rand(4, 16)).shape == (4, 8)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="dims"):
        ProjectorHead(16, dims=())


def test_voxel_projection_head_keeps_spatial_size() -> None:
    head = VoxelProjectionHead(16, out_dim=8)
    assert head(torch.rand(2, 16, 5, 6, 7)).shape == (2, 8, 5, 6, 7)
    with pytest.raises(ValueError, match="expects"):
        head(torch.rand(2, 16))
