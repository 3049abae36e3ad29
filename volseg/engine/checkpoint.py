"""Checkpoints that resume exactly and rebuild their models: format, atomic save, safe load.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    format, version, stage, torch_version, world_size
    modules      {name: state_dict}        model weights, wrapper prefixes removed
    model_args   {name: dict}              constructor keyword arguments given by the stage
    optimizers   {name: state_dict}
    schedulers   {name: state_dict}
    scaler       GradScaler state_dict or None
    epoch, global_step, total_steps, elapsed_s
    best_metric, best_epoch, metric_name
    rng          [per-rank RNG states: python, numpy, torch, cuda]
    config       resolved config (dict); train_config: the training section used
    extra        stage-defined plain data (numbers, strings, lists, dicts, tensors)
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volseg.errors import InputError, load_error_text
from volseg.io import atomic_path

log = logging.getLogger(__name__)

FORMAT = "volseg-checkpoint"
VERSION = 1
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as weights-only-loadable data."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _to_plain(obj: Any) -> Any:
    """Tuples to lists recursively (weights-only unpickling accepts lists of ints)."""
    if isinstance(obj, tuple):
        return [_to_plain(x) for x in obj]
    return obj


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` to a temporary file, then rename it into place."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a volseg checkpoint (weights only, no arbitrary code), checking its format.

    Raises :class:`InputError` naming the file if it is missing, unreadable or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, foreign objects
        raise InputError(f"{path}: not a readable checkpoint ({load_error_text(exc)})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path}: not a volseg checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise InputError(
            f"{path}: checkpoint format version {ckpt['version']} is newer than this volseg"
        )
    return ckpt


def load_model_weights(
    path: str | os.PathLike, name: str, map_location: Any = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, constructor_kwargs)`` of module ``name`` from a checkpoint file."""
    ckpt = load_checkpoint(path, map_location)
    if name not in ckpt["modules"]:
        have = ", ".join(sorted(ckpt["modules"])) or "none"
        raise InputError(f"{path}: no module named '{name}' (has: {have})")
    return ckpt["modules"][name], dict(ckpt.get("model_args", {}).get(name, {}))
