"""What the training stages share: the prepared data of a run and the network's arguments.

Every training stage starts from ``prepare``'s outputs (datalist with splits, lung masks,
preprocessing cache of the train and val studies). Test studies are absent from the cache,
so nothing here can hand a test scan to a training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volseg.config import Config
from volseg.data.mosmed import Datalist
from volseg.errors import ConfigError, InputError, cause_text


@dataclass
class Prepared:
    """A run's datalist and its cached (preprocessed) train/val volumes by study id."""

    datalist: Datalist
    volumes: dict[str, Any]  # id -> volseg.data.cache.CachedVolume

    def volumes_of(self, studies: list[Any]) -> list[Any]:
        """Cached volumes for ``studies`` (Study records), in the same order."""
        return [self.volumes[s.id] for s in studies if s.id in self.volumes]


def load_prepared(cfg: Config) -> Prepared:
    """Load ``<run_dir>/prepare/datalist.json`` and open its cache (run ``prepare`` first)."""
    from volseg.data.cache import load_cache
    from volseg.stages.prepare import datalist_path

    path = datalist_path(cfg.run_dir)
    if not path.is_file():
        raise InputError(f"{path}: not found; run 'volseg prepare' (or 'volseg run') first")
    datalist = Datalist.load(path)
    if datalist.cache_dir is None:
        raise InputError(f"{path}: no preprocessing cache recorded; set data.cache: true")
    ids = [s.id for s in datalist.studies_in(("train", "val"))]
    return Prepared(datalist, load_cache(datalist.cache_dir, ids))


def model_kwargs(cfg: Config) -> dict[str, Any]:
    """Constructor arguments of the segmentation network named in ``cfg.model``.

    ``model.recalibration`` is passed only when set, so networks without the option still
    build with the default ``none``.
    """
    kwargs: dict[str, Any] = {"in_channels": 1, "out_channels": 1, **cfg.model.params}
    if cfg.model.recalibration != "none":
        kwargs["recalibration"] = cfg.model.recalibration
    return kwargs


def check_model(cfg: Config) -> Any:
    """Build ``cfg.model`` on the meta device (no memory, no random numbers drawn) and return
    it, or raise a :class:`ConfigError` naming ``model.name`` or ``model.params``."""
    import torch

    from volseg.models import build_model
    from volseg.models.registry import MODELS

    key = "model.name" if cfg.model.name not in MODELS else "model.params"
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return build_model(cfg.model.name, **model_kwargs(cfg))
    except Exception as exc:  # constructors check their arguments with several types
        raise ConfigError(f"{key}: {cause_text(exc)}") from None


def stage_dir(cfg: Config, stage: str) -> Path:
    """``<run_dir>/<stage>``, created."""
    path = Path(cfg.run_dir) / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def preprocessing_of(cfg: Config) -> dict[str, Any]:
    """What a model bundle records so predict reproduces training's preprocessing."""
    return {"spacing": list(cfg.data.spacing), "hu_window": list(cfg.data.hu_window)}
