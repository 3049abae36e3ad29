"""A model on lesions painted into real CTs, beside a density-threshold reference.

Reads a ``volseg synth --paint`` set and a ``volseg predict --prob`` folder of its studies and
prints, per painted study: the painted and predicted lung involvement, the model's Dice, the
Dice of a reference that knows nothing but density (lung voxels whose lightly smoothed HU
reach ``--reference-hu``, opened once, inside the painted set's lung mask) and the model's
mean probability on painted ground glass, painted consolidation and unpainted lung. The
reference shows how much of the painted set plain density inside a known lung mask already
explains; the probabilities show whether a miss is a ranking or a threshold problem.

    volseg synth --paint HEALTHY_CTS --out P
    volseg predict -m RUN -i P/studies/CT-1 P/studies/CT-2 P/studies/CT-3 -o PRED \\
        --lungs P/lungs --min-involvement 0 --prob
    python bench/painted_bench.py --painted P --pred PRED
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

log = logging.getLogger("painted_bench")


def _mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(values[where].mean()) if where.any() else float("nan")


def score_study(painted: Path, pred: Path, sid: str, category: str, reference_hu: float) -> dict:
    """One painted study's row of the table."""
    from volseg.data import layout
    from volseg.evaluation.metrics import overlap_metrics
    from volseg.io import read_nifti
    from volseg.quantify import GGO

    truth = read_nifti(layout.truth_path(painted, sid))[0] > 0
    types = read_nifti(layout.truth_types_path(painted, sid))[0]
    lungs = read_nifti(layout.lungs_path(painted / "lungs", sid))[0] > 0
    hu = read_nifti(layout.image_path(painted, category, sid))[0].astype(np.float32)
    mask = read_nifti(layout.prediction_path(pred, sid))[0] > 0
    prob_file = pred / f"{sid}_prob.nii.gz"
    prob = read_nifti(prob_file)[0].astype(np.float32) if prob_file.is_file() else None
    dense = ndimage.gaussian_filter(hu, 1.0) >= reference_hu
    reference = ndimage.binary_opening(dense & lungs)
    n_lung = max(int(lungs.sum()), 1)
    row = {
        "study": sid,
        "category": category,
        "painted_pct": 100.0 * truth.sum() / n_lung,
        "predicted_pct": 100.0 * (mask & lungs).sum() / n_lung,
        "dice": overlap_metrics(mask, truth)["dice"],
        "reference_dice": overlap_metrics(reference, truth)["dice"],
    }
    if prob is not None:
        row["p_ggo"] = _mean(prob, truth & (types == GGO))
        row["p_consolidation"] = _mean(prob, truth & (types > GGO))
        row["p_lung"] = _mean(prob, lungs & ~truth)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--painted", type=Path, required=True, help="a `volseg synth --paint` set")
    parser.add_argument("--pred", type=Path, required=True, help="`volseg predict` output")
    parser.add_argument("--reference-hu", type=float, default=-650.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with open(args.painted / "manifest.csv", newline="") as fh:
        studies = [(r["study_id"], r["category"]) for r in csv.DictReader(fh)]
    rows = [score_study(args.painted, args.pred, s, c, args.reference_hu) for s, c in studies]
    cols = [k for k in rows[0] if k not in ("study", "category")]
    log.info("| study | category | %s |", " | ".join(cols))
    log.info("|---|---|%s", "---:|" * len(cols))
    for r in rows:
        values = " | ".join(f"{r.get(k, float('nan')):.3f}" for k in cols)
        log.info("| %s | %s | %s |", r["study"], r["category"], values)
    means = " | ".join(f"{np.nanmean([r.get(k, np.nan) for r in rows]):.3f}" for k in cols)
    log.info("| mean of %d | | %s |", len(rows), means)


if __name__ == "__main__":
    main()
