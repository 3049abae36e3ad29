"""What the training stages share: the prepared data of a run and the network's arguments.

Every training stage starts from ``prepare``'s outputs (datalist with splits, lung masks,
preprocessing cache of the train and val studies). Test studies are absent from the cache,
so nothing here can hand a test scan to a training step.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    from volseg.rundir import datalist_path

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

    ``model.params.<name>`` for the chosen backbone, ``img_size`` from ``model.patch_size``
    for networks that take one (the TransUNet's token grid), ``model.recalibration`` only
    when set, so networks without the option still build with the default ``none``.
    """
    from volseg.models.registry import MODELS, constructor_params

    kwargs: dict[str, Any] = {"in_channels": 1, "out_channels": 1}
    kwargs.update(cfg.model.params.get(cfg.model.name) or {})
    cls = MODELS.get(cfg.model.name)
    if cls is not None and "img_size" in constructor_params(cls):
        kwargs["img_size"] = list(cfg.model.patch_size)
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


def recipe_of(cfg: Config) -> Any:
    """The run's preprocessing :class:`volseg.recipe.Recipe` (cache, bundle, predictor)."""
    from volseg.recipe import Recipe

    return Recipe.from_config(cfg)
