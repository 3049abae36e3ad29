"""Config loading: validation, did-you-mean, overrides, path resolution, saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from volseg.config import Config, load_config, save_resolved
from volseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.yaml", "smoke.yaml", "mosmed.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, Config)
    assert cfg.data.root.is_absolute()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_unknown_key_named_with_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, "finetune:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'finetune.epoch'.*did you mean 'epochs'"):
        load_config(path)


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'fintune'.*'finetune'"):
        load_config(_write(tmp_path, "fintune: {epochs: 3}\n"))


def test_wrong_type_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid value for 'gan.batch_size'"):
        load_config(_write(tmp_path, "gan: {batch_size: many}\n"))


def test_override_applies_and_is_typed(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, "finetune: {epochs: 3}\n"), ["finetune.epochs=7", "data.spacing=[1,1,2]"]
    )
    assert cfg.finetune.epochs == 7
    assert cfg.data.spacing == (1.0, 1.0, 2.0)


def test_override_unknown_key_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="predict.overlapp.*'overlap'"):
        load_config(None, ["predict.overlapp=0.3"])


def test_override_bad_syntax() -> None:
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["finetune.epochs"])


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "cfgs"
    sub.mkdir()
    path = sub / "c.yaml"
    path.write_text("run_dir: ../runs/x\ndata: {root: data}\n")
    cfg = load_config(path)
    assert cfg.run_dir == (tmp_path / "runs" / "x").resolve()
    assert cfg.data.root == (sub / "data").resolve()


def test_command_line_paths_override(tmp_path: Path) -> None:
    cfg = load_config(None, data_root=tmp_path / "d", run_dir=tmp_path / "r")
    assert cfg.data.root == (tmp_path / "d").resolve()
    assert cfg.run_dir == (tmp_path / "r").resolve()


def test_bad_hu_window_and_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.hu_window"):
        load_config(None, ["data.hu_window=[400,-1000]"])
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(None, ["data.split.val_fraction=0.6", "data.split.test_fraction=0.5"])
    with pytest.raises(ConfigError, match="data.lung_density_hu"):
        load_config(None, ["data.lung_density_hu=-300"])  # soft tissue, not lung
    aligned = load_config(None, ["data.root=/data/mosmed", "data.lung_density_hu=-820"])
    assert aligned.data.lung_density_hu == -820.0
    # unset, it leaves the data section's hash as it was before it existed (659df9f), so
    # upgrading does not re-run existing runs' stages; set, it changes it
    unset = load_config(None, ["data.root=/data/mosmed"])
    assert unset.section_hash("data") == "354d252b881f3b75" != aligned.section_hash("data")


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_resolved_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["finetune.lr=0.01"], run_dir=tmp_path / "run")
    saved = save_resolved(cfg)
    assert saved == tmp_path / "run" / "config.yaml"
    again = load_config(saved)
    assert again == cfg
    assert yaml.safe_load(saved.read_text())["finetune"]["lr"] == 0.01
    assert cfg.section_hash("finetune") == again.section_hash("finetune")
    assert cfg.section_hash("finetune") != load_config(None).section_hash("finetune")
