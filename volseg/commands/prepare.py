"""`volseg prepare`: datalist with patient-level splits, lung masks, preprocessing cache."""

from __future__ import annotations

import argparse

from volseg.commands._common import add_config_arguments

HELP = "datalist + patient-level splits, lung masks, preprocessed cache"
DESCRIPTION = (
    "Read a MosMed-layout dataset (studies/CT-0..CT-4, masks/), split it by patient into "
    "train/val/test stratified by category and labeled/unlabeled, compute lung masks and "
    "cache the preprocessed train/val volumes. Writes <run_dir>/prepare/datalist.json, "
    "<run_dir>/prepare/lungs/ and <run_dir>/cache/; work already done is reused."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from volseg.commands._common import load_config_from_args
    from volseg.pipeline.stage_command import run_stage_command

    run_stage_command(load_config_from_args(args), "prepare")
    return 0
