"""The network fine-tuning trains, and the pretrained encoder it starts from.

:class:`FinetuneNet` is the segmentation network plus its voxel projection head;
:func:`read_encoder` / :func:`load_pretrained_encoder` read pretrain's ``encoder.pt`` (the
contract between the two stages) and load it strictly into a network's encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from volseg.errors import InputError

ENCODER_FORMAT = "volseg-encoder"


class FinetuneNet(nn.Module):
    """Segmentation network plus an optional voxel projection head, as one module.

    ``forward(x) -> (logits, projected embeddings or None)``. One module so DDP sees the
    embedding branch through ``forward``; the bundle keeps only ``seg``.
    """

    def __init__(self, seg: nn.Module, proj: nn.Module | None) -> None:
        super().__init__()
        self.seg = seg
        self.proj = proj

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.proj is None:
            return self.seg(x), None
        logits, emb = self.seg.forward_with_embedding(x)
        return logits, self.proj(emb)


def read_encoder(path: str | Path) -> dict[str, Any]:
    """Load ``encoder.pt`` (weights only); InputError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pretrained encoder not found (run 'volseg pretrain')")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable encoder file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise InputError(f"{path}: not a volseg encoder file (format != {ENCODER_FORMAT})")
    return payload


def _normalised(obj: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float spellings) compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def load_pretrained_encoder(
    model: nn.Module, path: str | Path, name: str, params: dict[str, Any]
) -> None:
    """Load ``path`` (pretrain's ``encoder.pt``) strictly into ``model.encoder``.

    ``name``/``params`` describe ``model``; an encoder pretrained for another network or
    other constructor arguments is an :class:`InputError` naming the differing keys.
    """
    path = Path(path)
    payload = read_encoder(path)
    info = payload.get("model") or {}
    if info.get("name") != name:
        raise InputError(
            f"{path}: encoder was pretrained for model '{info.get('name')}', but model.name "
            f"is '{name}'; re-run pretrain or set finetune.init: scratch"
        )
    theirs, mine = _normalised(info.get("params") or {}), _normalised(params)
    if theirs != mine:
        keys = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        diffs = ", ".join(f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in keys)
        raise InputError(
            f"{path}: encoder was pretrained with other model.params ({diffs}; pretrained vs "
            f"now); re-run pretrain or set finetune.init: scratch"
        )
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise InputError(f"model '{name}' has no encoder to initialise from {path}")
    try:
        encoder.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise InputError(f"{path}: encoder weights do not fit model '{name}' ({first})") from exc
