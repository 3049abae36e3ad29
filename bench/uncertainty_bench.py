"""Does the flip-disagreement score point at the scans that went wrong?

Predicts a run's test split again with ``--uncertainty`` (all eight flips), evaluates each
case against its reference, and prints per case the uncertainty score, ``needs_review``
and Dice, then the rank correlation of score with Dice and the share of the lowest-Dice
quartile that the review flag catches (and how many scans it flags in all).

    python bench/uncertainty_bench.py --run runs/demo --data data/synth
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run directory")
    parser.add_argument("--data", type=Path, required=True, help="its dataset (MosMed layout)")
    parser.add_argument("--review-threshold", type=float, default=None)
    args = parser.parse_args()

    from scipy.stats import spearmanr

    from volseg.stages.evaluate import run_evaluate
    from volseg.stages.predict import run_predict

    refs = args.run / "evaluate" / "inputs" / "ref"
    ids = sorted(p.name[: -len("_mask.nii.gz")] for p in refs.glob("*_mask.nii.gz"))
    images = [next(args.data.glob(f"studies/*/{sid}.nii.gz")) for sid in ids]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pred"
        run_predict(
            args.run,
            images,
            out,
            lungs=args.run / "prepare" / "lungs",
            uncertainty=True,
            review_disagreement=args.review_threshold,
        )
        info = {sid: json.loads((out / f"{sid}.json").read_text()) for sid in ids}
        ev = run_evaluate(out, refs, Path(tmp) / "eval", bootstrap=0)
        import csv

        with open(ev / "per_case.csv", newline="") as fh:
            dice = {r["case_id"]: float(r["dice"]) for r in csv.DictReader(fh)}
    print(f"{'case':12s} {'score':>7s} {'review':>7s} {'Dice':>6s}")
    for sid in ids:
        i = info[sid]
        print(
            f"{sid:12s} {i['uncertainty_score']:7.3f} {str(i['needs_review']):>7s} {dice[sid]:6.3f}"
        )
    scores = np.array([info[s]["uncertainty_score"] for s in ids])
    dices = np.array([dice[s] for s in ids])
    flagged = np.array([info[s]["needs_review"] for s in ids])
    worst = dices <= np.quantile(dices, 0.25)
    rho = spearmanr(scores, dices).statistic
    first = info[ids[0]]
    print(
        f"\nreview threshold {first['review_threshold']:.4g} from {first['review_threshold_source']}"
        + (f" ({first['review_threshold_n']} scans)" if first["review_threshold_n"] else "")
    )
    print(
        f"Spearman(score, Dice) {rho:.3f}; lowest-Dice quartile {int(worst.sum())} scans, "
        f"{int((flagged & worst).sum())} flagged; {int(flagged.sum())} of {len(ids)} flagged"
    )


if __name__ == "__main__":
    main()
