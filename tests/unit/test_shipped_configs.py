"""Every backbone is selectable by name with every shipped config (``--set model.name=X``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from volseg.cli import main
from volseg.config import load_config
from volseg.models.registry import MODELS
from volseg.stages.common import check_model, model_kwargs

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_backbone_builds_with_every_shipped_config(config: Path, name: str) -> None:
    cfg = load_config(config, [f"model.name={name}"])
    model = check_model(cfg)  # on the meta device
    assert type(model) is MODELS[name]
    kwargs = model_kwargs(cfg)
    assert kwargs.get("img_size", list(cfg.model.patch_size)) == list(cfg.model.patch_size)


def test_models_command_shows_a_configs_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    demo = next(c for c in CONFIGS if c.stem == "demo")
    assert main(["models", "-c", str(demo)]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        assert name in out
    assert "* transunet3d" in out and "884,601" in out  # the demo's CPU-sized TransUNet3D
