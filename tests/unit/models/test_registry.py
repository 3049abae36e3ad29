"""Registry look-ups and the `volseg models` command."""

from __future__ import annotations

import json

import pytest

from volseg.cli import main
from volseg.models import GAN_MODELS, HEADS, MODELS, build_gan_model, build_head, build_model


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'transunet3d'"):
        build_model("transunet")


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ValueError, match="'hiden_size'.*did you mean 'hidden_size'"):
        build_model("transunet3d", hiden_size=64)


def test_yaml_style_lists_are_accepted() -> None:
    model = build_model("unet3d", filters=[4, 8, 8], strides=[[2, 2, 1], [2, 2, 2]])
    assert model.total_stride == (4, 4, 2)


def test_gan_and_head_builders() -> None:
    assert type(build_gan_model("generator3d", widths=(4, 8), strides=((2, 2, 1),))).__name__ == (
        "Generator3D"
    )
    assert build_head("voxel_projection", in_channels=8).out_dim == 64
    with pytest.raises(ValueError, match="needs parameter"):
        build_head("projector")
    with pytest.raises(ValueError, match="unknown GAN model"):
        build_gan_model("discriminator")


def test_models_command_lists_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {row["name"] for row in rows}
    assert names == set(MODELS) | set(GAN_MODELS) | set(HEADS)
    assert all(row["parameters"] > 0 for row in rows)
