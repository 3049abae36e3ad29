"""Lung-mask benchmark: time, peak memory and Dice of ``volseg.data.lungs.lung_mask`` against
the plain threshold baseline, in one run.

Cases: full-size synthetic MosMed-like studies (512 x 512 x 40, 0.7 x 0.7 x 8 mm, made
with ``volseg synth`` code, scored against their true lungs) and, when ``../shared/data/
real`` is present, the real CTs with reference masks (LIDC-IDRI-0001: 512 x 512 x 133) and
optionally every scanner variant of them (``--variants``). Each case runs in a fresh child
process so its peak resident memory is its own (``ru_maxrss`` of the child, which includes
the decoded volume and the Python/torch runtime). Prints a table.

    python bench/lungs_bench.py                  # 3 mosmed-size studies + real CTs
    python bench/lungs_bench.py --variants       # + the full real-CT variant matrix
    OMP_NUM_THREADS=2 python bench/lungs_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _run_case(kind: str, arg: str, threads: int, queue) -> None:
    """Child process: load one case, time the mask and the baseline, report."""
    import nibabel as nib
    import torch

    from volseg.data.lungs import lung_mask
    from volseg.data.variants import dice, scan_variants, threshold_baseline

    torch.set_num_threads(threads)
    if kind == "synth":
        from volseg.data.synth import synthesize_study

        category, seed = arg.split(":")
        study = synthesize_study("mosmed", category, int(seed))
        cases = [(f"mosmed {category} seed {seed}", study.image, study.lungs, study.affine)]
    else:
        img = nib.load(str(REAL / f"{arg}.nii.gz"))
        ref = np.asanyarray(nib.load(str(REAL / f"{arg}_lungs.nii.gz")).dataobj)
        hu = np.asanyarray(img.dataobj)
        if kind == "real":
            cases = [(f"{arg} native", hu, ref, img.affine)]
        else:
            whole = arg != "example_ct_sm"
            cases = [
                (f"{arg} {v.name}", v.image, v.reference, v.affine)
                for v in scan_variants(hu, ref, img.affine, whole_chest=whole)
            ]
    lung_mask(cases[0][1], cases[0][3])  # warm-up: torch and SciPy first-call costs
    rows = []
    for name, image, truth, affine in cases:
        start = time.perf_counter()
        result = lung_mask(image, affine)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        base = threshold_baseline(image, affine)
        base_seconds = time.perf_counter() - start
        rows.append(
            {
                "case": name,
                "shape": "x".join(map(str, image.shape)),
                "seconds": seconds,
                "dice": dice(result.mask, truth),
                "baseline_seconds": base_seconds,
                "baseline_dice": dice(base, truth),
                "right_ml": result.right_ml,
                "left_ml": result.left_ml,
            }
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    queue.put({"rows": rows, "peak_mb": peak_mb})


def run(kind: str, arg: str, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_case, args=(kind, arg, threads, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=3, help="synthetic mosmed-size studies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", action="store_true", help="every real-CT variant too")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    jobs = [("synth", f"CT-{k % 5}:{k}") for k in range(args.studies)]
    for scan in ("example_ct_sm", "lidc_idri_0001_chest_ct"):
        if (REAL / f"{scan}.nii.gz").exists():
            jobs.append(("variants" if args.variants else "real", scan))
    results = []
    print(
        f"{'case':48s} {'shape':>13s} {'s':>6s} {'Dice':>7s} {'base s':>7s} {'base Dice':>9s}"
        f" {'ratio':>6s} {'R mL':>7s} {'L mL':>7s} {'peak MB':>8s}"
    )
    for kind, arg in jobs:
        out = run(kind, arg, args.threads)
        for row in out["rows"]:
            row["peak_mb"] = out["peak_mb"]
            results.append(row)
            print(
                f"{row['case'][:48]:48s} {row['shape']:>13s} {row['seconds']:6.2f}"
                f" {row['dice']:7.4f} {row['baseline_seconds']:7.2f} {row['baseline_dice']:9.4f}"
                f" {row['seconds'] / max(row['baseline_seconds'], 1e-9):6.2f}"
                f" {row['right_ml']:7.0f} {row['left_ml']:7.0f} {out['peak_mb']:8.0f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
