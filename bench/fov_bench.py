"""Does a short field of view change what a model calls? Lung bases, whole scan against cut.

For each scan: the scan turned to RAS, its lungs found as ``volseg predict`` finds them, and
a copy cut along the body to the lowest ``--lung-mm`` of lung and ``--below-mm`` under it
(the field of view of the lung bases on an abdominal CT; the shared lung-base CT holds 36 mm
of lung over 54 mm of abdomen). Both are predicted by the one predictor with the gate off,
and compared on the slices they share: the share of those slices' lungs called lesion, and
with ``--truth`` (``<id>_mask.nii.gz`` on the scan's grid) the Dice there. A model that reads
the scan's content gives the same answer for both; one that reacts to the sliding window's
padding of a short scan does not.

    python bench/fov_bench.py --model runs/demo --scans SCAN... [--truth DIR] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    from volseg.evaluation.metrics import overlap_metrics

    return float(overlap_metrics(pred, truth)["dice"])


def cut_rows(lungs: np.ndarray, spacing_z: float, lung_mm: float, below_mm: float) -> slice | None:
    """The RAS slices of the lung bases' field of view, or None without lungs."""
    filled = np.flatnonzero(lungs.any(axis=(0, 1)))
    if filled.size == 0:
        return None
    first = max(0, int(filled[0] - round(below_mm / spacing_z)))
    stop = min(lungs.shape[2], int(filled[0] + round(lung_mm / spacing_z)))
    return slice(first, stop)


def score_scan(
    predictor, path: Path, truth_dir: Path | None, lung_mm: float, below_mm: float
) -> dict:
    """One scan's row: called % of the shared lungs, whole scan and cut, and Dice with truth."""
    import nibabel as nib

    from volseg.inference.predictor import lung_mask_for
    from volseg.io import strip_nifti_suffix

    sid = strip_nifti_suffix(path.name)
    ras = nib.as_closest_canonical(nib.load(str(path)))
    image = np.asarray(ras.dataobj, dtype=np.float32)
    lungs = lung_mask_for(image, ras.affine).mask > 0
    rows = cut_rows(lungs, float(ras.header.get_zooms()[2]), lung_mm, below_mm)
    if rows is None:
        return {"id": sid, "error": "no lungs found"}
    cut = ras.slicer[:, :, rows]
    cut_image = np.asarray(cut.dataobj, dtype=np.float32)
    cut_lungs = lung_mask_for(cut_image, cut.affine).mask > 0
    whole = predictor.predict(image, ras.affine, lungs).mask[:, :, rows] > 0
    short = predictor.predict(cut_image, cut.affine, cut_lungs).mask > 0
    shared = lungs[:, :, rows]
    n = max(int(shared.sum()), 1)
    row = {
        "id": sid,
        "slices": f"{rows.stop - rows.start} of {image.shape[2]}",
        "whole_pct": 100.0 * float((whole & shared).sum()) / n,
        "cut_pct": 100.0 * float((short & shared).sum()) / n,
    }
    if truth_dir is not None:
        truth_file = truth_dir / f"{sid}_mask.nii.gz"
        if truth_file.is_file():
            truth_img = nib.as_closest_canonical(nib.load(str(truth_file)))
            truth = np.asarray(truth_img.dataobj)[:, :, rows] > 0
            row["truth_pct"] = 100.0 * float((truth & shared).sum()) / n
            if truth.any():  # a healthy scan's share called is its figure, not a Dice
                row["whole_dice"] = _dice(whole, truth)
                row["cut_dice"] = _dice(short, truth)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or model.pt bundle")
    parser.add_argument("--scans", nargs="+", required=True, type=Path, help="NIfTI scans")
    parser.add_argument("--truth", type=Path, help="folder of <id>_mask.nii.gz lesion masks")
    parser.add_argument(
        "--lung-mm", type=float, default=36.0, help="lung kept above its lowest slice (mm)"
    )
    parser.add_argument(
        "--below-mm", type=float, default=54.0, help="body kept below the lungs (mm)"
    )
    parser.add_argument("--csv", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from volseg.bundle import load_bundle
    from volseg.inference.predictor import Predictor

    predictor = Predictor.from_bundle(load_bundle(args.model), {"min_involvement_pct": 0.0})
    rows = [score_scan(predictor, p, args.truth, args.lung_mm, args.below_mm) for p in args.scans]
    keys = ["id", "slices", "whole_pct", "cut_pct", "truth_pct", "whole_dice", "cut_dice", "error"]
    keys = [k for k in keys if any(k in r for r in rows)]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print("| " + " | ".join(cells) + " |")
    for key in ("whole_pct", "cut_pct", "whole_dice", "cut_dice"):
        values = [r[key] for r in rows if key in r]
        if values:
            print(f"mean {key}: {np.mean(values):.3f} over {len(values)} scan(s)")
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
