"""Losses for volseg: Barlow Twins, voxel SupCon, sensitivity BCE, Dice/MSE, GAN, fine-tuning.

``LOSSES`` is the registry of loss classes by name.
"""

from __future__ import annotations

from torch import nn

from volseg.losses.barlow_twins import BarlowTwinsLoss, gather_batch
from volseg.losses.contrastive import SupConVoxelLoss, boundary_bands, supcon_from_features
from volseg.losses.gan import AdversarialLoss, RestorationL1Loss
from volseg.losses.probability import ProbabilityMSELoss, SoftDiceLoss
from volseg.losses.segmentation import FinetuneLoss
from volseg.losses.sensitivity import SensitivityBCELoss

LOSSES: dict[str, type[nn.Module]] = {
    "barlow_twins": BarlowTwinsLoss,
    "supcon_voxel": SupConVoxelLoss,
    "sensitivity_bce": SensitivityBCELoss,
    "probability_mse": ProbabilityMSELoss,
    "soft_dice": SoftDiceLoss,
    "finetune": FinetuneLoss,
    "adversarial": AdversarialLoss,
    "restoration_l1": RestorationL1Loss,
}

__all__ = [
    "LOSSES",
    "AdversarialLoss",
    "BarlowTwinsLoss",
    "FinetuneLoss",
    "ProbabilityMSELoss",
    "RestorationL1Loss",
    "SensitivityBCELoss",
    "SoftDiceLoss",
    "SupConVoxelLoss",
    "boundary_bands",
    "gather_batch",
    "supcon_from_features",
]
