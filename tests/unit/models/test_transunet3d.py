"""Segmentation networks: shapes at odd sizes, encoder weights by name, attention, gradients."""

from __future__ import annotations

import pytest
import torch

from volseg.models import MODELS, TransUNet3D, UNet3D, build_model, encoder_parameter_split
from volseg.models.vit import MultiHeadSelfAttention

TINY_TRANSUNET = dict(
    widths=(4, 8, 8, 16, 16), hidden_size=16, depth=1, num_heads=2, img_size=(32, 32, 16)
)
TINY_UNET = dict(filters=(4, 8, 8, 16, 16))


def tiny(name: str, **extra) -> torch.nn.Module:
    params = TINY_TRANSUNET if name == "transunet3d" else TINY_UNET
    return build_model(name, **{**params, **extra})


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [(32, 32, 16), (80, 96, 40), (61, 70, 19)])
def test_output_size_equals_input_size(name: str, size: tuple[int, int, int]) -> None:
    model = tiny(name, out_channels=2).eval()
    x = torch.rand(1, 1, *size)
    with torch.no_grad():
        logits, emb = model.forward_with_embedding(x)
    assert logits.shape == (1, 2, *size)
    assert emb.shape == (1, model.embedding_channels, *size)
    assert torch.isfinite(logits).all()


def test_default_transunet_shape_and_size() -> None:
    model = TransUNet3D().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 15e6 < n_params < 40e6
    assert model.total_stride == (16, 16, 8)
    assert model.encoder.out_channels == 384
    x = torch.rand(1, 1, 64, 64, 32)
    with torch.no_grad():
        skips, bottleneck = model.encoder(x)
        logits = model(x)
    assert logits.shape == (1, 1, 64, 64, 32)
    assert [s.shape[1] for s in skips] == [16, 32, 64, 128]
    assert [tuple(s.shape[2:]) for s in skips] == [
        (64, 64, 32),
        (32, 32, 32),
        (16, 16, 16),
        (8, 8, 8),
    ]
    assert bottleneck.shape == (1, 384, 4, 4, 4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_encoder_weights_load_into_fresh_model_by_name(name: str) -> None:
    torch.manual_seed(0)
    source = tiny(name)
    torch.manual_seed(1)
    target = tiny(name)
    enc_state = source.encoder.state_dict()
    full_keys = set(target.state_dict())
    assert all(f"encoder.{k}" in full_keys for k in enc_state)
    # As a pretraining stage would: prefix with "encoder." and load non-strictly into the full net.
    result = target.load_state_dict({f"encoder.{k}": v for k, v in enc_state.items()}, strict=False)
    assert not result.unexpected_keys
    assert all(not k.startswith("encoder.") for k in result.missing_keys)
    target.encoder.load_state_dict(enc_state, strict=True)
    for key, value in target.encoder.state_dict().items():
        assert torch.equal(value, enc_state[key])
    x = torch.rand(1, 1, 32, 32, 16)
    source.eval(), target.eval()
    with torch.no_grad():
        assert torch.allclose(source.encoder(x)[1], target.encoder(x)[1])


def test_encoder_parameter_split_covers_everything_once() -> None:
    model = tiny("transunet3d")
    enc, rest = encoder_parameter_split(model)
    assert len(enc) == len(list(model.encoder.parameters()))
    assert len(enc) + len(rest) == len(list(model.parameters()))


def test_positional_embedding_is_resampled_for_other_sizes() -> None:
    torch.manual_seed(0)
    model = tiny("transunet3d").eval()
    vit = model.encoder.vit
    assert vit.pos_embed.shape[2:] == (2, 2, 2)  # img_size 32x32x16 / stride (16, 16, 8)
    assert vit.positional_embedding((2, 2, 2)) is vit.pos_embed
    bigger = vit.positional_embedding((4, 6, 3))
    assert bigger.shape == (1, 16, 4, 6, 3)
    # Resampling keeps the range of the learned values (trilinear interpolation, no extrapolation).
    assert bigger.min() >= vit.pos_embed.min() - 1e-6 and bigger.max() <= vit.pos_embed.max() + 1e-6
    with torch.no_grad():
        small = model(torch.rand(1, 1, 32, 32, 16))
        large = model(torch.rand(1, 1, 64, 96, 24))
    assert small.shape[2:] == (32, 32, 16) and large.shape[2:] == (64, 96, 24)


def test_attention_matches_direct_softmax_in_float64() -> None:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(hidden_size=24, num_heads=3).double().eval()
    x = torch.randn(2, 10, 24, dtype=torch.float64)
    q, k, v = attn.split_heads(x)
    d = q.shape[-1]
    weights = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
    direct = (weights @ v).transpose(1, 2).reshape(2, 10, 24)
    expected = attn.proj(direct)
    assert torch.allclose(attn(x), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_reach_every_parameter(name: str) -> None:
    model = tiny(name)
    logits, emb = model.forward_with_embedding(torch.rand(2, 1, 32, 32, 16))
    (logits.square().mean() + emb.mean()).backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(widths=(8, 16)), "widths"),
        (dict(hidden_size=30, num_heads=4), "num_heads"),
        (dict(strides=((3, 2, 1),)), "strides"),
        (dict(norm="layer"), "norm"),
        (dict(dropout=1.5), "dropout"),
        (dict(img_size=(0, 32, 32)), "img_size"),
        (dict(norm="group", widths=(4, 8, 8, 16, 16)), "group"),
    ],
)
def test_transunet_rejects_bad_arguments(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        TransUNet3D(**kwargs)


def test_unet_rejects_bad_filters_and_wrong_input() -> None:
    with pytest.raises(ValueError, match="filters"):
        UNet3D(filters=(8, 16))
    with pytest.raises(ValueError, match="expects"):
        tiny("unet3d")(torch.rand(1, 2, 16, 16, 8))


def test_init_args_rebuild_the_same_architecture() -> None:
    model = tiny("transunet3d", norm="batch")
    rebuilt = build_model("transunet3d", **model.init_args)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
