"""`volseg pretrain`: Barlow Twins pretraining of the segmentation encoder (no labels)."""

from __future__ import annotations

import argparse

from volseg.commands._common import add_training_arguments

HELP = "Barlow Twins pretraining of the encoder; writes <run_dir>/pretrain/encoder.pt"
DESCRIPTION = (
    "Self-supervised Barlow Twins pretraining of the encoder of the segmentation network "
    "(model.name) on every train-split scan, labels unused: two augmented views per "
    "lung-centred crop, encoder + projector, cross-correlation towards the identity. Writes "
    "<run_dir>/pretrain/encoder.pt (loaded by finetune when finetune.init is 'pretrained') "
    "and probe.json (a linear probe separating lesion from lung voxels on frozen features, "
    "pretrained vs random encoder). An interrupted run resumes from its last checkpoint; a "
    "finished one is a no-op. Many GPUs: torchrun --nproc_per_node N -m volseg pretrain ..."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from volseg.commands._common import load_config_from_args
    from volseg.engine.distributed import cleanup_distributed
    from volseg.pipeline.stage_command import run_stage_command

    run_stage_command(load_config_from_args(args), "pretrain", resume=args.resume)
    cleanup_distributed()  # every torchrun worker leaves together and exits 0
    return 0
