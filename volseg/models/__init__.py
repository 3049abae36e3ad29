"""volseg networks: 3D TransUNet, U-Net, residual U-Net, UNet++, the 3D GAN, heads, a registry.

All networks take ``(B, C, D, H, W)`` tensors of CT scaled from [-1000, 400] HU to [0, 1] and
explicit keyword arguments (never a config object); see ``docs/models.md``.
"""

from __future__ import annotations

from volseg.models.gan3d import Generator3D, PatchDiscriminator3D
from volseg.models.heads import ProjectorHead, VoxelProjectionHead
from volseg.models.recalibrated import Recalibrated, recalibrated
from volseg.models.registry import (
    GAN_MODELS,
    HEADS,
    MODELS,
    build_gan_model,
    build_head,
    build_model,
    describe_models,
    encoder_parameter_split,
)
from volseg.models.resunet3d import ResUNet3D
from volseg.models.transunet3d import TransUNet3D
from volseg.models.unet3d import UNet3D
from volseg.models.unetpp3d import UNetPlusPlus3D

__all__ = [
    "GAN_MODELS",
    "HEADS",
    "MODELS",
    "Generator3D",
    "PatchDiscriminator3D",
    "ProjectorHead",
    "Recalibrated",
    "ResUNet3D",
    "TransUNet3D",
    "UNet3D",
    "UNetPlusPlus3D",
    "VoxelProjectionHead",
    "build_gan_model",
    "build_head",
    "build_model",
    "describe_models",
    "encoder_parameter_split",
    "recalibrated",
]
