"""`volseg run`: every stage in order in one run directory, skipping what is up to date."""

from __future__ import annotations

import argparse

from volseg.commands._common import add_config_arguments

HELP = "run the whole pipeline (prepare → gan → pretrain → finetune → predict → evaluate)"
DESCRIPTION = (
    "Run prepare, gan, pretrain, finetune, predict (test split) and evaluate in one run "
    "directory. Each stage writes <run_dir>/<stage>/manifest.json; a stage whose settings "
    "and inputs are unchanged since it finished is skipped, an interrupted one continues "
    "from its checkpoints, and a changed one re-runs with everything after it. "
    "See docs/pipeline.md."
)

# The stage table lives in volseg.pipeline.run (not imported here, to keep --help fast);
# a unit test checks the two agree.
STAGE_NAMES = ("prepare", "gan", "pretrain", "finetune", "predict", "evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--from",
        dest="start",
        choices=STAGE_NAMES,
        metavar="STAGE",
        help="re-run this stage and every later one (earlier ones only if out of date)",
    )
    which.add_argument(
        "--only",
        choices=STAGE_NAMES,
        metavar="STAGE",
        help="consider this stage alone (its inputs must exist); skipped if up to date",
    )
    parser.add_argument(
        "--force", action="store_true", help="re-run every selected stage from scratch"
    )


def run(args: argparse.Namespace) -> int:
    from volseg.commands._common import load_config_from_args
    from volseg.pipeline.run import run_pipeline

    run_pipeline(load_config_from_args(args), start=args.start, only=args.only, force=args.force)
    return 0
