"""`volseg evaluate`: metrics, plots and a report for predicted masks against references."""

from __future__ import annotations

import argparse

HELP = "compare predicted masks with reference masks: metrics CSV/JSON, plots, report"
DESCRIPTION = (
    "Pair <id>_mask.nii.gz predictions with <id>_mask.nii.gz references, compute whole-volume "
    "and per-lesion metrics (Dice, IoU, sensitivity, specificity, precision, HD95, NSD, lesion "
    "detection, volume and involvement errors, CT grade), and write per_case.csv, summary.json, "
    "plots, report.md and a self-contained report.html into the output folder."
)


# Shown in --help without importing the config module (kept fast); the values actually used
# come from volseg.config.EvaluateConfig, and a unit test checks these match it.
HELP_DEFAULTS = {
    "bootstrap": 1000,
    "nsd_tolerance_mm": 2.0,
    "involvement_bins": (0, 5, 25, 50, 100),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    shown = HELP_DEFAULTS
    parser.add_argument("--pred", required=True, metavar="DIR", help="predicted masks folder")
    parser.add_argument("--ref", required=True, metavar="DIR", help="reference masks folder")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--lungs", metavar="DIR", help="lung masks <id>_lungs.nii.gz (involvement %%, CT grade)"
    )
    parser.add_argument(
        "--types",
        metavar="DIR",
        help="reference lesion types <id>_types.nii.gz (1 ground glass, 2 consolidation): "
        "scores predictions written with predict --types per type",
    )
    parser.add_argument(
        "--categories",
        metavar="CSV_OR_DATASET",
        help="MosMed category of every scan to judge (CSV with id,category, or a dataset "
        "folder with studies/CT-k/): scores the grade in --pred's <id>.json reports against "
        "it for all these scans, masked or not, and the burden called on CT-0 scans",
    )
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="the CTs (<id>.nii.gz, or a dataset folder with studies/CT-k/) on the reference "
        "grid: adds montage.png, the cases lowest Dice first with both outlines",
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="resample predictions onto the reference grid (nearest) instead of failing",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        metavar="N",
        help=f"bootstrap resamples for 95%% CIs, 0 for none (default {shown['bootstrap']})",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--nsd-tolerance",
        type=float,
        metavar="MM",
        help=f"surface Dice tolerance in mm (default {shown['nsd_tolerance_mm']:g})",
    )
    parser.add_argument(
        "--bins",
        type=float,
        nargs="+",
        metavar="PCT",
        help="involvement %% bin edges for strata (default "
        + " ".join(f"{b:g}" for b in shown["involvement_bins"])
        + ")",
    )


def run(args: argparse.Namespace) -> int:
    from volseg.config import EvaluateConfig
    from volseg.evaluation.all_scans import read_categories
    from volseg.evaluation.cases import list_images
    from volseg.stages.evaluate import run_evaluate

    defaults = EvaluateConfig()
    run_evaluate(
        args.pred,
        args.ref,
        args.out,
        lungs_dir=args.lungs,
        resample=args.resample,
        bootstrap=defaults.bootstrap if args.bootstrap is None else args.bootstrap,
        seed=args.seed,
        nsd_tolerance_mm=(
            defaults.nsd_tolerance_mm if args.nsd_tolerance is None else args.nsd_tolerance
        ),
        involvement_bins=defaults.involvement_bins if args.bins is None else args.bins,
        types_dir=args.types,
        categories=None if args.categories is None else read_categories(args.categories),
        images=None if args.images is None else list_images(args.images),
    )
    return 0
