"""Every backbone x recalibration: shapes at odd sizes, gradients, encoder weights, bundles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.blocks import ResidualUnit, UnetBasicBlock, UnetResBlock
from torch import nn

from tests.blob_fitting import blob_volume, fit_blob
from volseg.bundle import load_bundle, save_bundle
from volseg.config import Config, ModelConfig
from volseg.models import MODELS, Recalibrated, build_model
from volseg.models.recalibrated import recalibrated, recalibration_modules
from volseg.models.recalibration import (
    RECALIBRATIONS,
    SingularityStrengthRecalibration3D,
    SqueezeExcitation3D,
)
from volseg.recipe import Recipe
from volseg.stages.common import model_kwargs

BACKBONES = ("transunet3d", "unet3d", "resunet3d", "unetpp3d")
ODD = (37, 41, 19)
TINY: dict[str, dict] = {
    "transunet3d": dict(
        widths=(4, 8, 8, 16), hidden_size=16, depth=1, num_heads=2, img_size=(32, 32, 16)
    ),
    "unet3d": dict(filters=(4, 8, 8, 16)),
    "resunet3d": dict(filters=(4, 8, 8, 16), num_res_units=1),
    "unetpp3d": dict(filters=(4, 8, 8, 16)),
}
STRIDES = ((2, 2, 1), (2, 2, 2), (2, 2, 2))
RECAL_TYPES = {"se": SqueezeExcitation3D, "ssr": SingularityStrengthRecalibration3D}


def tiny(name: str, recalibration: str = "none", **extra) -> nn.Module:
    params = {"strides": STRIDES, **TINY[name], **extra}
    return build_model(name, recalibration=recalibration, **params)


def expected_recal_counts(name: str, model: nn.Module) -> tuple[int, int]:
    """(encoder blocks, decoder blocks) that should each carry one recalibration."""
    levels = len(STRIDES) + 1
    if name == "transunet3d":
        return levels, 1 + len(STRIDES)  # bottleneck projection + up blocks
    if name == "unetpp3d":
        return levels, len(STRIDES) * (len(STRIDES) + 1) // 2  # nested nodes
    return levels, len(STRIDES)


def test_every_backbone_is_registered() -> None:
    assert set(BACKBONES) <= set(MODELS)


@pytest.mark.parametrize("recalibration", RECALIBRATIONS)
@pytest.mark.parametrize("name", BACKBONES)
def test_odd_size_forward_backward_and_recalibration_placement(
    name: str, recalibration: str
) -> None:
    torch.manual_seed(0)
    model = tiny(name, recalibration, out_channels=2)
    x = torch.rand(1, 1, *ODD)
    logits, emb = model.forward_with_embedding(x)
    assert logits.shape == (1, 2, *ODD)
    assert emb.shape == (1, model.embedding_channels, *ODD)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()
    (logits.square().mean() + emb.mean()).backward()
    assert model.init_args["recalibration"] == recalibration

    enc_recals = recalibration_modules(model.encoder)
    all_recals = recalibration_modules(model)
    if recalibration == "none":
        assert not all_recals
        return
    n_enc, n_dec = expected_recal_counts(name, model)
    assert len(enc_recals) == n_enc
    assert len(all_recals) == n_enc + n_dec
    assert all(isinstance(m, RECAL_TYPES[recalibration]) for m in all_recals)
    # Gradients reach every recalibration module's parameters, in the encoder and the decoder
    # (an SE hidden unit may sit at ReLU's zero, so the test is per module, not per tensor).
    for module in all_recals:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


@pytest.mark.parametrize("recalibration", ["se", "ssr"])
@pytest.mark.parametrize("name", BACKBONES)
def test_encoder_with_recalibration_loads_by_name(name: str, recalibration: str) -> None:
    torch.manual_seed(0)
    source = tiny(name, recalibration)
    # Make the recalibration weights non-trivial (SSR starts at zero) so loading is visible.
    with torch.no_grad():
        for module in recalibration_modules(source.encoder):
            for p in module.parameters():
                p.add_(0.3 * torch.randn_like(p))
    torch.manual_seed(1)
    target = tiny(name, recalibration)
    enc_state = source.encoder.state_dict()
    assert any("recal" in k for k in enc_state)
    # As fine-tuning does: strict load of pretrain's encoder.pt into a fresh model's encoder.
    target.encoder.load_state_dict(enc_state, strict=True)
    x = torch.rand(1, 1, 32, 32, 16)
    source.eval(), target.eval()
    with torch.no_grad():
        src_skips, src_bottleneck = source.encoder(x)
        tgt_skips, tgt_bottleneck = target.encoder(x)
    assert torch.allclose(src_bottleneck, tgt_bottleneck)
    assert all(torch.allclose(a, b) for a, b in zip(src_skips, tgt_skips, strict=True))
    # A network without recalibration cannot take these weights.
    with pytest.raises(RuntimeError):
        tiny(name).encoder.load_state_dict(enc_state, strict=True)


@pytest.mark.parametrize("name", ["resunet3d", "unetpp3d"])
def test_level_encoder_interface_at_odd_size(name: str) -> None:
    model = tiny(name)
    enc = model.encoder
    assert enc.out_channels == 16 and enc.in_channels == 1
    assert model.total_stride == (8, 8, 4)
    with torch.no_grad():
        skips, bottleneck = enc(torch.rand(2, 1, *ODD))  # pretraining calls it unpadded
    assert [s.shape[1] for s in skips] == [4, 8, 8]
    assert [tuple(s.shape[2:]) for s in skips] == [(37, 41, 19), (19, 21, 19), (10, 11, 10)]
    assert bottleneck.shape == (2, 16, 5, 6, 5)


def test_block_types_follow_the_papers() -> None:
    unet = tiny("unet3d")
    assert unet.init_args["res_block"] is False  # Ronneberger et al.: plain double conv
    assert isinstance(unet.encoder.input_block, UnetBasicBlock)
    assert isinstance(tiny("unet3d", res_block=True).encoder.input_block, UnetResBlock)
    res = tiny("resunet3d", num_res_units=2)
    assert all(isinstance(level, ResidualUnit) for level in res.encoder.levels)
    assert len(res.encoder.levels[0].conv) == 2  # two conv-norm-act subunits
    pp = tiny("unetpp3d")
    assert [len(column) for column in pp.nodes] == [3, 2, 1]
    # Node X[i][j] fuses j same-level tensors with one upsampled tensor: (j + 1) * filters[i].
    assert pp.nodes[2][0].conv.conv1.conv.in_channels == 4 * 4
    assert pp.nodes[0][2].conv.conv1.conv.in_channels == 2 * 8


def test_recalibrated_wrapper_composes_and_keeps_none_keys() -> None:
    block = nn.Conv3d(2, 3, 1)
    assert recalibrated(block, "none", 3) is block
    wrapped = recalibrated(block, "se", 3)
    assert isinstance(wrapped, Recalibrated)
    x = torch.rand(2, 2, 5, 6, 7)
    assert torch.equal(wrapped(x), wrapped.recal(block(x)))
    # "none" keeps the state-dict keys of networks built before recalibration existed.
    keys = set(tiny("unet3d").state_dict())
    assert "encoder.input_block.conv1.conv.weight" in keys
    assert not any(".block." in k for k in keys)


@pytest.mark.parametrize("name", BACKBONES)
def test_unknown_recalibration_is_rejected_with_a_suggestion(name: str) -> None:
    with pytest.raises(ValueError, match="did you mean 'ssr'"):
        tiny(name, "ssrr")
    with pytest.raises(ValueError, match="recalibration"):
        tiny(name, "squeeze")


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("resunet3d", dict(num_res_units=0), "num_res_units"),
        ("resunet3d", dict(filters=(4, 8)), "filters"),
        ("unetpp3d", dict(strides=((2, 2, 3), (2, 2, 2), (2, 2, 2))), "strides"),
        ("unetpp3d", dict(norm="group"), "group"),
        ("unetpp3d", dict(dropout=1.0), "dropout"),
    ],
)
def test_bad_arguments_name_the_argument(name: str, kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        tiny(name, **kwargs)


@pytest.mark.parametrize(
    "name, recalibration",
    [(b, r) for b in BACKBONES for r in ("se", "ssr")],
)
def test_bundle_round_trip_rebuilds_backbone_with_recalibration(
    tmp_path: Path, name: str, recalibration: str
) -> None:
    torch.manual_seed(0)
    cfg = Config(
        model=ModelConfig(
            name=name,
            recalibration=recalibration,
            patch_size=(32, 32, 16),
            params={name: {**TINY[name], "strides": [list(s) for s in STRIDES]}},
        )
    )
    model = build_model(name, **model_kwargs(cfg))
    with torch.no_grad():
        for module in recalibration_modules(model):
            for p in module.parameters():
                p.add_(0.3 * torch.randn_like(p))
    path = save_bundle(
        tmp_path / "model.pt",
        model,
        name,
        model.init_args,
        Recipe((1.5, 1.5, 5.0), (-1000, 400), (32, 32, 16)),
    )
    bundle = load_bundle(path)
    assert type(bundle.model) is type(model)
    assert bundle.model_params["recalibration"] == recalibration
    assert len(recalibration_modules(bundle.model)) == len(recalibration_modules(model))
    x = torch.rand(1, 1, 21, 18, 9)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(bundle.model(x), model(x), atol=1e-6)


@pytest.mark.parametrize("name, recalibration", [("resunet3d", "se"), ("unetpp3d", "ssr")])
def test_new_backbones_learn_a_blob(name: str, recalibration: str) -> None:
    """A few Adam steps fit one blob: the networks (and their recalibration) can learn."""
    torch.manual_seed(0)
    image, label = blob_volume((24, 24, 12), (10, 13, 6), (5, 4, 3))
    dice = fit_blob(tiny(name, recalibration), image, label, lr=1e-2)
    assert dice > 0.9
