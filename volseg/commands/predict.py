"""``volseg predict -m MODEL -i INPUT -o OUTDIR``: lesion masks in each input's geometry."""

from __future__ import annotations

import argparse

HELP = "predict lesion masks, volumes, involvement % and CT grade for NIfTI/DICOM scans"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="run directory or model.pt bundle")
    parser.add_argument(
        "-i",
        "--input",
        required=True,
        nargs="+",
        help="a .nii/.nii.gz file, a folder of them, a DICOM series folder or a .zip of one",
    )
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--series", help="DICOM series UID when a folder holds several")
    parser.add_argument("--lungs", help="lung mask file or folder (<id>_lungs.nii.gz)")
    parser.add_argument("--no-lungs", action="store_true", help="do not restrict to the lungs")
    parser.add_argument("--prob", action="store_true", help="also write <id>_prob.nii.gz")
    parser.add_argument(
        "--output-type",
        choices=("nifti", "dicom-seg", "both"),
        default="nifti",
        help="mask as NIfTI, as a DICOM SEG referencing the input series (DICOM inputs), or both",
    )
    parser.add_argument(
        "--types",
        action="store_true",
        help="also write <id>_types.nii.gz (1 ground glass, 2 consolidation)",
    )
    parser.add_argument(
        "--consolidation-hu",
        type=float,
        help="lesion voxels at or above this HU are consolidation (default -200)",
    )
    parser.add_argument("--overlays", action="store_true", help="write PNG axial overlays")
    parser.add_argument(
        "--ref", help="reference mask file or folder (<id>_mask.nii.gz) outlined in the overlays"
    )
    parser.add_argument("--roi", type=int, nargs="+", help="sliding-window ROI (1 or 3 sizes)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1)")
    parser.add_argument("--sw-batch-size", type=int, help="windows per forward pass")
    parser.add_argument(
        "--tta", action="store_true", default=None, help="flip test-time augmentation"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="network arithmetic: auto (autocast on GPU, fp32 on CPU; the default), fp32, "
        "or bf16 on any device (about 2x faster on CPUs with AVX512-BF16/AMX)",
    )
    parser.add_argument("--threshold", type=float, help="probability threshold")
    parser.add_argument("--min-component", type=float, help="drop lesions smaller (mm³)")
    parser.add_argument(
        "--min-involvement",
        type=float,
        help="call a scan lesion-free below this predicted lung involvement (%%; 0: off)",
    )
    parser.add_argument(
        "--uncertainty",
        action="store_true",
        default=None,
        help="eight flips: <id>_uncertainty.nii.gz, uncertainty_score and needs_review",
    )
    parser.add_argument(
        "--review-threshold",
        type=float,
        help="needs_review at this flip disagreement or above (0..1; default: the model's, "
        "chosen on validation scans, else 0.5)",
    )
    parser.add_argument(
        "--lung-margin",
        type=float,
        help="keep lesions within this distance of the lung mask (mm; 0: strictly inside)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if present)")
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=0,
        help="decode and lung-mask scans in N worker processes (default 0: one thread)",
    )
    parser.add_argument("--num-parts", type=int, default=1, help="split inputs into K parts")
    parser.add_argument("--part-id", type=int, default=0, help="which part to run (0-based)")


def run(args: argparse.Namespace) -> int:
    import logging

    from volseg.errors import InputError
    from volseg.inference.predictor import parse_roi
    from volseg.stages.predict import run_predict

    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise InputError("--overlap must be in [0, 1)")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise InputError("--threshold must be in (0, 1)")
    if args.min_involvement is not None and not 0 <= args.min_involvement < 100:
        raise InputError("--min-involvement must be in [0, 100)")
    if args.sw_batch_size is not None and args.sw_batch_size < 1:
        raise InputError("--sw-batch-size must be at least 1")
    if args.min_component is not None and args.min_component < 0:
        raise InputError("--min-component must be >= 0 (mm³)")
    if args.review_threshold is not None and not 0 <= args.review_threshold <= 1:
        raise InputError("--review-threshold must be in [0, 1]")
    if args.lung_margin is not None and not 0 <= args.lung_margin <= 50:
        raise InputError("--lung-margin must be in [0, 50] (mm)")
    try:
        roi = parse_roi(args.roi)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if roi is not None and min(roi) < 1:
        raise InputError(f"--roi sizes must be at least 1, got {' '.join(map(str, args.roi))}")
    summary = run_predict(
        args.model,
        args.input,
        args.out,
        lungs=args.lungs,
        use_lungs=not args.no_lungs,
        write_prob=args.prob,
        write_types=args.types,
        output_type=args.output_type,
        overlays=args.overlays,
        reference=args.ref,
        series=args.series,
        num_parts=args.num_parts,
        part_id=args.part_id,
        device=args.device,
        decode_workers=args.decode_workers,
        roi_size=roi,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta,
        precision=args.precision,
        threshold=args.threshold,
        min_component_mm3=args.min_component,
        min_involvement_pct=args.min_involvement,
        lung_margin_mm=args.lung_margin,
        consolidation_min_hu=args.consolidation_hu,
        uncertainty=args.uncertainty,
        review_disagreement=args.review_threshold,
    )
    logging.getLogger("volseg.predict").info("wrote %s", summary)
    return 0
