"""Networks by name: the one place the config, the CLI and checkpoints look models up.

``MODELS`` holds segmentation networks (``model.name`` in the config; every one takes
``recalibration="none"|"se"|"ssr"``), ``GAN_MODELS`` the GAN
pair and ``HEADS`` the projection heads. ``build_model(name, **params)`` checks the name (with
a did-you-mean) and the parameter names against the constructor before building, so a typo
in a YAML file fails with a message naming it. Every built model carries ``init_args``, so
a checkpoint storing ``{"name": ..., "params": model.init_args}`` can rebuild it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from volseg.models._common import count_parameters
from volseg.models.gan3d import Generator3D, PatchDiscriminator3D
from volseg.models.heads import ProjectorHead, VoxelProjectionHead
from volseg.models.resunet3d import ResUNet3D
from volseg.models.transunet3d import TransUNet3D
from volseg.models.unet3d import UNet3D
from volseg.models.unetpp3d import UNetPlusPlus3D
from volseg.utils import did_you_mean

MODELS: dict[str, type[nn.Module]] = {
    "transunet3d": TransUNet3D,
    "unet3d": UNet3D,
    "resunet3d": ResUNet3D,
    "unetpp3d": UNetPlusPlus3D,
}
GAN_MODELS: dict[str, type[nn.Module]] = {
    "generator3d": Generator3D,
    "patch_discriminator3d": PatchDiscriminator3D,
}
HEADS: dict[str, type[nn.Module]] = {
    "projector": ProjectorHead,
    "voxel_projection": VoxelProjectionHead,
}


def constructor_params(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """Keyword parameters a network's constructor accepts (excluding ``self``)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind is not p.VAR_KEYWORD}


def _build(
    registry: Mapping[str, type[nn.Module]], kind: str, name: str, params: dict
) -> nn.Module:
    if name not in registry:
        options = sorted(registry)
        raise ValueError(
            f"unknown {kind} '{name}'{did_you_mean(name, options)}; choose from {', '.join(options)}"
        )
    cls = registry[name]
    accepted = constructor_params(cls)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        hints = "".join(did_you_mean(k, list(accepted)) for k in unknown[:1])
        raise ValueError(
            f"{kind} '{name}' has no parameter {', '.join(repr(k) for k in unknown)}{hints}; "
            f"accepted: {', '.join(accepted)}"
        )
    missing = [k for k, p in accepted.items() if p.default is p.empty and k not in params]
    if missing:
        raise ValueError(f"{kind} '{name}' needs parameter(s) {', '.join(missing)}")
    return cls(**params)


def build_model(name: str, **params: Any) -> nn.Module:
    """Build a segmentation network from ``MODELS`` (ValueError for unknown names/params)."""
    return _build(MODELS, "model", name, params)


def build_gan_model(name: str, **params: Any) -> nn.Module:
    """Build ``generator3d`` or ``patch_discriminator3d`` from ``GAN_MODELS``."""
    return _build(GAN_MODELS, "GAN model", name, params)


def build_head(name: str, **params: Any) -> nn.Module:
    """Build ``projector`` or ``voxel_projection`` from ``HEADS`` (``in_channels`` required)."""
    return _build(HEADS, "head", name, params)


def encoder_parameter_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(encoder params, all other params)`` for a lower encoder LR or freezing the encoder."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(model).__name__} has no 'encoder' submodule")
    enc_ids = {id(p) for p in encoder.parameters()}
    enc = [p for p in model.parameters() if id(p) in enc_ids]
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    return enc, rest


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``volseg models``."""

    kind: str
    name: str
    cls: str
    parameters: int
    summary: str


def describe_models(head_in_channels: int | None = None) -> Iterator[ModelInfo]:
    """Every registered network built with its defaults, with parameter counts.

    Heads are built on the default TransUNet3D's channels (encoder output for the projector,
    decoder embedding for the voxel head) unless ``head_in_channels`` is given.
    """
    default_seg = TransUNet3D()
    for kind, registry in (("segmentation", MODELS), ("gan", GAN_MODELS)):
        for name, cls in registry.items():
            model = default_seg if cls is TransUNet3D else cls()
            yield ModelInfo(kind, name, cls.__name__, count_parameters(model), _first_line(cls))
    channels = {
        "projector": head_in_channels or default_seg.encoder.out_channels,
        "voxel_projection": head_in_channels or default_seg.embedding_channels,
    }
    for name, cls in HEADS.items():
        head = cls(channels[name])
        yield ModelInfo(
            "head",
            name,
            cls.__name__,
            count_parameters(head),
            f"{_first_line(cls)} [in_channels={channels[name]}]",
        )


def _first_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0].replace("``", "") if doc else ""
