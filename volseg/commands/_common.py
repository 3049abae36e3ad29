"""Argument groups shared by several subcommands."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--config FILE [--data DIR] [--run-dir DIR] [--set k=v ...]`` for pipeline stages."""
    parser.add_argument("-c", "--config", required=required, help="YAML config file")
    parser.add_argument("--data", help="dataset root (overrides data.root)")
    parser.add_argument("--run-dir", help="run directory (overrides run_dir)")
    add_set_argument(parser)


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set section.key=value`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set finetune.epochs=5",
    )


def load_config_from_args(args: argparse.Namespace):
    """Build the validated config from the standard config arguments."""
    from volseg.config import load_config

    return load_config(args.config, args.overrides, data_root=args.data, run_dir=args.run_dir)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Config arguments plus ``--resume`` (default) / ``--no-resume`` for training stages."""
    add_config_arguments(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="continue from the stage's last checkpoint if there is one (default)",
    )
    group.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over, discarding the stage's checkpoints",
    )
