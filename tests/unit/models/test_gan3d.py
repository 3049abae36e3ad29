"""GAN generator/discriminator, lesion corruptor and projection heads."""

from __future__ import annotations

import pytest
import torch

from volseg.models import (
    Generator3D,
    LesionCorruptor,
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


def _lung_box(shape: tuple[int, ...]) -> torch.Tensor:
    lung = torch.zeros(shape)
    lung[..., 4:28, 6:26, 2:14] = 1
    return lung


def test_corruptor_stays_in_lung_and_is_deterministic() -> None:
    x = 0.1 + 0.02 * torch.rand(3, 1, 32, 32, 16)
    lung = _lung_box(x.shape)
    corruptor = LesionCorruptor(blobs=(2, 4), radius_mm=(3.0, 9.0), spacing=(1.5, 1.5, 3.0))
    out1, mask1 = corruptor(x, lung, torch.Generator().manual_seed(7))
    out2, mask2 = corruptor(x, lung, torch.Generator().manual_seed(7))
    out3, _ = corruptor(x, lung, torch.Generator().manual_seed(8))
    assert torch.equal(out1, out2) and torch.equal(mask1, mask2)
    assert not torch.equal(out1, out3)
    outside = lung == 0
    assert torch.equal(out1[outside], x[outside])
    assert (mask1[outside] == 0).all()
    changed = out1 != x
    assert torch.equal(changed, mask1 > 0)
    assert (mask1 > 0).flatten(1).any(1).all()  # every sample got at least one blob
    assert out1.min() >= 0 and out1.max() <= 1
    # Lesions are denser than aerated lung: painted voxels get brighter on average.
    assert (out1 - x)[mask1 > 0.5].mean() > 0.1


def test_lung_rim_is_the_lung_border_not_the_patch_face() -> None:
    lung = torch.zeros(1, 1, 20, 20, 10, dtype=torch.bool)
    lung[..., 0:15, 5:20, 2:10] = True  # touches the patch faces at x=0, y=19, z=9
    rim = LesionCorruptor(spacing=(2.0, 2.0, 4.0), pleural_mm=4.0).lung_rim(lung)
    # 4 mm = 2 voxels in-plane, 1 voxel through-plane; only the faces that meet non-lung count.
    expected = lung.clone()
    expected[..., 0:13, 7:20, 3:10] = False
    assert torch.equal(rim, expected)


def test_pleural_prob_moves_blobs_to_the_lung_rim() -> None:
    x = torch.full((8, 1, 32, 32, 16), 0.1)
    lung = _lung_box(x.shape) > 0
    kwargs = {
        "blobs": (3, 3),
        "radius_mm": (2.0, 3.0),
        "spacing": (1.5, 1.5, 3.0),
        "pleural_mm": 3.0,
    }
    rim = LesionCorruptor(**kwargs).lung_rim(lung)

    def rim_share(prob: float) -> float:
        corruptor = LesionCorruptor(pleural_prob=prob, **kwargs)
        _, weight = corruptor(x, lung.float(), torch.Generator().manual_seed(0))
        return float(weight[rim].sum() / weight.sum())

    uniform, pleural = rim_share(0.0), rim_share(1.0)
    assert rim.float().sum() / lung.float().sum() < 0.7  # the rim is not the whole lung
    assert pleural > uniform + 0.15
    with pytest.raises(ValueError, match="pleural_prob"):
        LesionCorruptor(pleural_prob=1.5)


def test_corruptor_intensities_follow_hu_ranges() -> None:
    x = torch.zeros(1, 1, 32, 32, 16)
    lung = torch.ones_like(x)
    ggo_only = LesionCorruptor(
        blobs=(3, 3), strength=(1.0, 1.0), consolidation_prob=0.0, texture=0.0
    )
    out, mask = ggo_only(x, lung, torch.Generator().manual_seed(0))
    core = out[mask > 0.99]
    assert core.numel() > 0
    lo, hi = (-700 + 1000) / 1400, (-300 + 1000) / 1400
    assert core.min() >= lo - 1e-3 and core.max() <= hi + 1e-3


def test_corruptor_without_lung_changes_nothing_and_rejects_bad_args() -> None:
    x = torch.rand(2, 1, 16, 16, 8)
    out, mask = LesionCorruptor()(x, torch.zeros_like(x), torch.Generator().manual_seed(0))
    assert torch.equal(out, x) and not mask.any()
    with pytest.raises(ValueError, match="lung_mask"):
        LesionCorruptor()(x, torch.zeros(2, 1, 16, 16, 4))
    with pytest.raises(ValueError, match="radius_mm"):
        LesionCorruptor(radius_mm=(9.0, 3.0))


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
