"""`volseg finetune`: 3D TransUNet on few true masks + pseudo-masks -> model bundle."""

from __future__ import annotations

import argparse

from volseg.commands._common import add_training_arguments

HELP = "fine-tune the segmentation network; writes <run_dir>/finetune/model.pt"
DESCRIPTION = (
    "Train the segmentation network (model.name) on the labeled training scans (at most "
    "finetune.n_labeled) plus the GAN's QC-passed pseudo-masks (weight "
    "finetune.pseudo_weight), starting from the pretrained encoder when finetune.init is "
    "'pretrained'. Validates by sliding-window Dice on the labeled val scans and writes the "
    "best weights as <run_dir>/finetune/model.pt (for `volseg predict -m <run_dir>`) and "
    "summary.json. An interrupted run resumes from its last checkpoint; a finished one is "
    "a no-op. Many GPUs: torchrun --nproc_per_node N -m volseg finetune ..."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from volseg.commands._common import load_config_from_args
    from volseg.engine.distributed import cleanup_distributed
    from volseg.pipeline.stage_command import run_stage_command

    run_stage_command(load_config_from_args(args), "finetune", resume=args.resume)
    cleanup_distributed()  # every torchrun worker leaves together and exits 0
    return 0
