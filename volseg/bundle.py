"""Model bundles: one file that rebuilds a trained network and its preprocessing.

A bundle (``model.pt``) holds the registry name and constructor arguments of the network,
its weights, the preprocessing it was trained with (working spacing, HU window) and default
inference settings, so ``volseg predict -m RUN_DIR`` needs no config (after nnU-Net, which
stores its trainer's init arguments beside the weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volseg import __version__
from volseg.errors import InputError, cause_text, load_error_text

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "volseg-model"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_NAME = "model.pt"


@dataclass
class Bundle:
    """A loaded bundle: the network (eval mode, on its device) and its settings."""

    model: Any
    model_name: str
    model_params: dict[str, Any]
    preprocessing: dict[str, Any]
    predict_defaults: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_bundle(
    path: str | Path,
    model: Any,
    model_name: str,
    model_params: dict[str, Any],
    preprocessing: dict[str, Any],
    predict_defaults: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically. ``preprocessing`` needs ``spacing`` and ``hu_window``."""
    import torch

    from volseg.io import atomic_path

    for key in ("spacing", "hu_window"):
        if key not in preprocessing:
            raise ValueError(f"preprocessing: missing '{key}'")
    module = getattr(model, "module", model)  # unwrap DDP
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    payload = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "volseg_version": __version__,
        "model": {"name": model_name, "params": dict(model_params)},
        "preprocessing": {k: _plain(v) for k, v in preprocessing.items()},
        "predict": {k: _plain(v) for k, v in (predict_defaults or {}).items()},
        "extra": dict(extra or {}),
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
    if version != BUNDLE_FORMAT_VERSION:
        raise InputError(
            f"{file}: bundle format version {version} is not supported by volseg "
            f"{__version__} (expects {BUNDLE_FORMAT_VERSION})"
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
    model.to(device).eval()
    return Bundle(
        model=model,
        model_name=name,
        model_params=params,
        preprocessing=payload["preprocessing"],
        predict_defaults=payload.get("predict", {}),
        extra=payload.get("extra", {}),
        path=file,
    )


def _plain(value: Any) -> Any:
    """Tuples to lists and paths to strings, so the payload loads with weights_only=True."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
