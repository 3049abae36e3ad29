"""Typed, validated configuration: YAML files plus ``--set section.key=value`` overrides.

Unknown keys and wrong types are refused with a message naming the key (and a did-you-mean
for typos). Relative paths in a config file resolve against that file's folder; paths given
on the command line resolve against the working directory. ``save_resolved`` writes the
final configuration into the run directory so every run records exactly what it used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from volseg.config_sections import (  # noqa: F401  (re-exported: the sections' home)
    DataConfig,
    EvaluateConfig,
    FinetuneConfig,
    GanConfig,
    ModelConfig,
    PredictConfig,
    PretrainConfig,
    Section,
    SplitConfig,
    TrainConfig,
)
from volseg.errors import ConfigError
from volseg.utils import did_you_mean


class Config(Section):
    """The whole configuration of a volseg run."""

    seed: int = Field(0, ge=0)
    run_dir: Path = Path("runs/default")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    gan: GanConfig = Field(default_factory=GanConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    def section_hash(self, name: str) -> str:
        """Stable hash of one section, used to decide whether a stage must re-run."""
        value = getattr(self, name).model_dump(mode="json")
        for section, key in ADDED_OFF_BY_NONE:  # unset: the hash of runs made before it
            if section == name and value.get(key) is None:
                value.pop(key, None)
        if name == "model":  # only the chosen backbone's sizes count
            value["params"] = value["params"].get(self.model.name) or {}
        payload = json.dumps(value, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


ADDED_OFF_BY_NONE = (("data", "lung_density_hu"),)
"""Settings added after runs existed whose unset value (None) changes nothing: left out of
their section's hash when unset, so upgrading does not re-run the stages of existing runs."""


# --------------------------------------------------------------------------- loading


def _section_fields(path: tuple[str | int, ...]) -> list[str]:
    """Field names valid at a dotted location, for did-you-mean suggestions."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _section_fields(loc[:-1]), cutoff=0.6)
            lines.append(f"{source}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{source}: invalid value for '{key}': {err['msg']}")
    return "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a","b","c"], value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def _apply_override(tree: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text!r}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


_PATH_KEYS = (("run_dir",), ("data", "root"))


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    """Make relative paths in the YAML tree absolute against ``base`` (the config folder)."""
    for keys in _PATH_KEYS:
        node: Any = tree
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            p = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(p if p.is_absolute() else (base / p).resolve())


MOVED_KEYS: dict[tuple[str, str], str] = {
    ("pretrain", "patch_size"): "model.patch_size",
    ("finetune", "patch_size"): "model.patch_size",
    ("predict", "roi_size"): "model.patch_size",
}
"""Keys that are gone, with the one that replaced them."""


def _refuse_moved_keys(tree: dict[str, Any], source: str) -> None:
    """One line naming the new key for a key of an older config."""
    for (section, key), new in MOVED_KEYS.items():
        node = tree.get(section)
        if isinstance(node, dict) and key in node:
            raise ConfigError(f"{source}: '{section}.{key}' is now '{new}' (one patch size)")
    params = (
        (tree.get("model") or {}).get("params") if isinstance(tree.get("model"), dict) else None
    )
    if isinstance(params, dict):
        for name, entry in params.items():
            if name == "img_size" or (isinstance(entry, dict) and "img_size" in entry):
                where = (
                    "model.params.img_size"
                    if name == "img_size"
                    else f"model.params.{name}.img_size"
                )
                raise ConfigError(f"{source}: '{where}' is now 'model.patch_size' (one patch size)")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    data_root: str | Path | None = None,
    run_dir: str | Path | None = None,
) -> Config:
    """Load and validate a config.

    ``path``: a YAML file (None for all defaults). ``overrides``: ``section.key=value``
    strings applied after the file. ``data_root`` / ``run_dir``: command-line paths that
    override the file's (relative to the working directory).
    """
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            what = "a folder, not a config file" if path.is_dir() else "config file not found"
            raise ConfigError(f"{path}: {what}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text (UTF-8) file; expected a YAML config") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded
        _resolve_paths(tree, path.resolve().parent)
    for text in overrides or []:
        parts, value = parse_override(text)
        _apply_override(tree, parts, value, text)
        if tuple(parts) in _PATH_KEYS and isinstance(value, str):
            tree_node: Any = tree
            for key in parts[:-1]:
                tree_node = tree_node[key]
            tree_node[parts[-1]] = str(Path(value).expanduser().resolve())
    if data_root is not None:
        tree.setdefault("data", {})["root"] = str(Path(data_root).expanduser().resolve())
    if run_dir is not None:
        tree["run_dir"] = str(Path(run_dir).expanduser().resolve())
    _refuse_moved_keys(tree, source)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    # Defaults that were never written anywhere are relative to the working directory.
    cfg.run_dir = cfg.run_dir.expanduser().resolve()
    cfg.data.root = cfg.data.root.expanduser().resolve()
    if cfg.data.split.val_fraction + cfg.data.split.test_fraction >= 1.0:
        raise ConfigError(
            f"{source}: data.split.val_fraction + data.split.test_fraction must be below 1"
        )
    return cfg


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (paths absolute, every default written out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_resolved(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Write ``config.yaml`` (the resolved config) into the run directory, atomically."""
    from volseg.io import write_text_atomic

    target = Path(run_dir or cfg.run_dir) / "config.yaml"
    return write_text_atomic(target, config_to_yaml(cfg))
