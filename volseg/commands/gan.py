"""`volseg gan`: train the healthy-lung 3D GAN and write pseudo-masks for unlabeled COVID scans."""

from __future__ import annotations

import argparse

from volseg.commands._common import add_training_arguments

HELP = "train the 3D GAN on healthy lungs; pseudo-masks + QC for unlabeled COVID scans"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    from volseg.commands._common import load_config_from_args
    from volseg.engine.distributed import cleanup_distributed
    from volseg.pipeline.stage_command import run_stage_command

    cfg = load_config_from_args(args)
    folder = run_stage_command(cfg, "gan", resume=args.resume)
    cleanup_distributed()  # every torchrun worker leaves together and exits 0
    logging.getLogger(__name__).info("gan: outputs in %s", folder)
    return 0
