"""Model bundles: one file that rebuilds a trained network and its preprocessing.

A bundle (``model.pt``) holds the registry name and constructor arguments of the network,
its weights, the whole preprocessing :class:`volseg.recipe.Recipe` it was trained with
(orientation, working spacing, HU window, body crop, patch size, version) and the inference
settings, so ``volseg predict -m RUN_DIR`` needs no config (after nnU-Net, which stores its
trainer's init arguments beside the weights), and what the training scans looked like
(``training_stats``: spacing and lung HU ranges, :mod:`volseg.inference.ood`), which predict
compares each scan with. Bundles without ``training_stats`` (made before it was recorded)
load as before; predict then reports its out-of-distribution check as unavailable. Format 1
bundles (spacing and window only) still load, with a warning: their body crop was not
recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volseg import __version__
from volseg.errors import InputError, cause_text, load_error_text
from volseg.recipe import Recipe

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "volseg-model"
BUNDLE_FORMAT_VERSION = 2
OLD_FORMAT_VERSIONS = (1,)
RECREATE = "re-create it with `volseg run -c CFG --from finetune`"
BUNDLE_NAME = "model.pt"


@dataclass
class Bundle:
    """A loaded bundle: the network (eval mode, on its device) and its settings."""

    model: Any
    model_name: str
    model_params: dict[str, Any]
    recipe: Recipe
    predict_defaults: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    training_stats: dict[str, Any] | None = None
    """The training scans' spacing and lung HU ranges; None in older bundles."""


def save_bundle(
    path: str | Path,
    model: Any,
    model_name: str,
    model_params: dict[str, Any],
    recipe: Recipe,
    predict_defaults: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    training_stats: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically, with the whole ``recipe`` (and ``training_stats`` when
    given: :func:`volseg.inference.ood.training_stats`)."""
    import torch

    from volseg.io import atomic_path

    module = getattr(model, "module", model)  # unwrap DDP
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    payload = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "volseg_version": __version__,
        "model": {"name": model_name, "params": dict(model_params)},
        "recipe": recipe.to_json(),
        "predict": {k: _plain(v) for k, v in (predict_defaults or {}).items()},
        "extra": dict(extra or {}),
        "training_stats": training_stats,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def resolve_bundle_path(path: str | Path) -> Path:
    """A bundle file, or a run directory holding ``finetune/model.pt`` or ``model.pt``."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "finetune" / BUNDLE_NAME, path / BUNDLE_NAME):
            if candidate.is_file():
                return candidate
        raise InputError(f"{path}: no model bundle found (expected finetune/{BUNDLE_NAME})")
    if not path.exists():
        raise InputError(f"{path}: model not found")
    return path


def load_bundle(path: str | Path, device: Any = "cpu") -> Bundle:
    """Load a bundle file or run directory; the model is built, loaded and put in eval mode."""
    import torch

    from volseg.models import build_model

    file = resolve_bundle_path(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{file}: not a readable volseg model bundle (damaged, truncated or not a "
            f"PyTorch file: {load_error_text(exc)})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{file}: not a volseg model bundle")
    version = payload.get("format_version")
    if version != BUNDLE_FORMAT_VERSION and version not in OLD_FORMAT_VERSIONS:
        raise InputError(
            f"{file}: bundle format version {version} is not supported by volseg "
            f"{__version__} (expects {BUNDLE_FORMAT_VERSION}); {RECREATE}"
        )
    try:
        name = str(payload["model"]["name"])
        params = dict(payload["model"]["params"])
        state = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{file}: incomplete volseg model bundle (no {exc})") from None
    try:
        model = build_model(name, **params)
        model.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise InputError(f"{file}: cannot rebuild network '{name}' ({cause_text(exc)})") from exc
    recipe = _recipe_of(payload, file, params)
    model.to(device).eval()
    return Bundle(
        model=model,
        model_name=name,
        model_params=params,
        recipe=recipe,
        predict_defaults=payload.get("predict", {}),
        extra=payload.get("extra", {}),
        path=file,
        training_stats=_training_stats_of(payload, file),
    )


def _plain(value: Any) -> Any:
    """Tuples to lists and paths to strings, so the payload loads with weights_only=True."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _training_stats_of(payload: dict[str, Any], file: Path) -> dict[str, Any] | None:
    """The bundle's training statistics, or None when absent (older bundle) or of a format
    this volseg does not read (logged: predict then reports the check as unavailable)."""
    from volseg.inference.ood import STATS_VERSION

    stats = payload.get("training_stats")
    if stats is None:
        return None
    if not isinstance(stats, dict) or stats.get("version") != STATS_VERSION:
        log.info("%s: training statistics of an unknown format: no out-of-distribution check", file)
        return None
    return stats


def _recipe_of(payload: dict[str, Any], file: Path, params: dict[str, Any]) -> Recipe:
    """The bundle's recipe; a format 1 bundle's is rebuilt from its spacing, window and
    ROI with today's body crop (a warning says so)."""
    if payload.get("format_version") == BUNDLE_FORMAT_VERSION:
        return Recipe.from_json(payload.get("recipe"), f"{file}: recipe")
    old = payload.get("preprocessing") or {}
    roi = (payload.get("predict") or {}).get("roi_size") or params.get("img_size")
    try:
        recipe = Recipe(spacing=old["spacing"], hu_window=old["hu_window"], patch_size=roi)
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{file}: format 1 bundle without spacing/window/ROI; {RECREATE}"
        ) from None
    log.warning(
        "%s: format 1 bundle (no preprocessing recipe): using its spacing and HU window with "
        "today's body crop, so predictions may differ slightly; %s",
        file,
        RECREATE,
    )
    return recipe
