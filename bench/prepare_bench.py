"""How long `prepare` takes at MosMed scale: time it on N full-size synthetic studies.

Writes N ``mosmed``-preset studies (512 x 512 x 40 at 0.7 x 0.7 x 8 mm, MosMed's own
grid) in MosMed's layout, runs ``volseg prepare`` on them with ``configs/mosmed.yaml``
(lung masks + preprocessing cache, one process), and prints the wall time, the time per
study and the extrapolation to MosMedData's 1,110 studies at that rate.

    python bench/prepare_bench.py --studies 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOSMED_STUDIES = 1110


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    args = parser.parse_args()

    from volseg.cli import main as volseg
    from volseg.data import layout
    from volseg.data.synth import synthesize_study
    from volseg.io import write_nifti

    categories = ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        start = time.perf_counter()
        for i in range(args.studies):
            category = categories[i % len(categories)]
            study = synthesize_study("mosmed", category, i)
            sid = f"study_{i + 1:04d}"
            write_nifti(layout.image_path(data, category, sid), study.image, study.affine)
        made = time.perf_counter() - start
        start = time.perf_counter()
        code = volseg(
            [
                "prepare",
                "-c",
                str(ROOT / "configs" / "mosmed.yaml"),
                "--data",
                str(data),
                "--run-dir",
                str(run),
                "--no-progress",
            ]
        )
        took = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"prepare failed with exit code {code}")
    per = took / args.studies
    print(f"{args.studies} studies synthesised in {made:.1f} s")
    print(f"{'studies':>8s} {'prepare (s)':>12s} {'s/study':>8s} {'1,110 studies (h)':>18s}")
    print(f"{args.studies:8d} {took:12.1f} {per:8.2f} {per * MOSMED_STUDIES / 3600:18.2f}")


if __name__ == "__main__":
    main()
