"""`volseg study`: the label-budget study (what each stage adds), with a table and a plot."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from volseg.commands._common import add_config_arguments

log = logging.getLogger(__name__)

HELP = "label-budget study: scratch / pretrain / pseudo / full arms at several label counts"
DESCRIPTION = (
    "Fine-tune, predict and evaluate each arm (scratch, pretrain, pseudo, full) at each "
    "number of labeled scans, on one shared split. prepare and gan run once per study and "
    "pretrain once per backbone × recalibration; every run is resumable. Writes study.csv, "
    "study.md and study.png into the study directory (run_dir). See docs/study.md."
)

ARM_NAMES = ("scratch", "pretrain", "pseudo", "full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--labels",
        required=True,
        help="numbers of labeled training scans, comma-separated; 'all' for every one "
        "(e.g. 0,2,5,all)",
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARM_NAMES),
        help=f"arms to run, comma-separated (default: {','.join(ARM_NAMES)})",
    )
    parser.add_argument(
        "--backbones",
        help="segmentation networks to compare, comma-separated (default: model.name)",
    )
    parser.add_argument(
        "--recalibration",
        help="recalibration modules to compare (none, se, ssr), comma-separated "
        "(default: model.recalibration)",
    )
    parser.add_argument(
        "--seeds",
        help="run seeds to repeat every cell with, comma-separated (e.g. 0,1,2); each seed "
        "has its own GAN, pretraining and fine-tuning under seed-<k>/, one split for all "
        "(default: the config's seed, cells directly in run_dir)",
    )
    parser.add_argument(
        "--painted",
        type=Path,
        help="a set written by `volseg synth --paint HEALTHY --out DIR`: each cell's model "
        "also predicts it (the painted-real-anatomy column)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what the study would run, run nothing"
    )


def run(args: argparse.Namespace) -> int:
    from volseg.commands._common import load_config_from_args
    from volseg.pipeline.study import StudyIncomplete, describe_plan, plan_study, run_study

    cfg = load_config_from_args(args)
    if args.dry_run:
        cells = plan_study(
            cfg,
            args.labels.split(","),
            args.arms.split(","),
            args.backbones.split(",") if args.backbones else None,
            args.recalibration.split(",") if args.recalibration else None,
            args.seeds,
        )
        log.info("study in %s: %s", cfg.run_dir, describe_plan(cells))
        for cell in cells:
            state = "" if cell.applicable else " (n/a)"
            log.info("  %s%s", cell.folder.as_posix(), state)
        return 0
    try:
        study_dir = run_study(
            cfg,
            args.labels,
            args.arms,
            args.backbones,
            args.recalibration,
            seeds=args.seeds,
            painted=args.painted,
        )
    except StudyIncomplete:
        _log_table(Path(cfg.run_dir))
        raise
    _log_table(study_dir)
    return 0


def _log_table(study_dir: Path) -> None:
    """Log ``study.md`` (the tables) when it was written."""
    table = study_dir / "study.md"
    if table.is_file():
        log.info("study results (%s):\n%s", table, table.read_text())
