"""How long `prepare` takes at MosMed scale: time it on N full-size synthetic studies.

Writes N ``mosmed``-preset studies (512 x 512 x 40 at 0.7 x 0.7 x 8 mm, MosMed's own grid)
in MosMed's layout and runs ``prepare`` on them with ``configs/mosmed.yaml`` once per
worker count in ``--workers`` (``data.prepare_workers``; 0 = one process, the reference),
each into a fresh run folder, then once more on the last run folder with nothing changed
(the incremental case). Prints per phase (dataset check, lung masks, cache) and in total the
wall time, studies per minute, the peak resident memory of the whole process tree (sampled
every 50 ms) and the extrapolation to MosMedData's 1,110 studies at the measured rate.

    python bench/prepare_bench.py --studies 8 --workers 0 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOSMED_STUDIES = 1110
PHASES = ("check", "lungs", "cache")


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


class PeakMemory:
    """Samples :func:`tree_rss_bytes` of this process in a thread; ``peak`` in bytes."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def prepare_phases(data: Path, run: Path, workers: int) -> dict[str, float]:
    """``prepare``'s three phases as ``run_prepare`` runs them, each timed (seconds)."""
    from volseg.config import load_config
    from volseg.data.cache import build_cache
    from volseg.recipe import Recipe
    from volseg.stages import prepare

    cfg = load_config(
        ROOT / "configs" / "mosmed.yaml",
        [f"data.prepare_workers={workers}"],
        data_root=data,
        run_dir=run,
    )
    prepare._CLEAN.clear()  # each run checks the dataset itself
    took: dict[str, float] = {}
    start = time.perf_counter()
    datalist = prepare.check_prepare(cfg)
    took["check"] = time.perf_counter() - start
    studies = [datalist.studies[i] for i in sorted(datalist.studies)]
    start = time.perf_counter()
    lungs = prepare.compute_lungs(studies, run / "prepare" / "lungs", workers)
    took["lungs"] = time.perf_counter() - start
    start = time.perf_counter()
    usable = datalist.with_lungs(lungs).studies_in(("train", "val"))
    build_cache(usable, Recipe.from_config(cfg), None, run / "cache", workers)
    took["cache"] = time.perf_counter() - start
    took["cached studies"] = len(usable)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    from volseg.data import layout
    from volseg.data.synth import synthesize_study
    from volseg.io import write_nifti

    categories = ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        start = time.perf_counter()
        for i in range(args.studies):
            category = categories[i % len(categories)]
            study = synthesize_study("mosmed", category, i)
            write_nifti(
                layout.image_path(data, category, f"study_{i + 1:04d}"), study.image, study.affine
            )
        print(f"{args.studies} studies synthesised in {time.perf_counter() - start:.1f} s")
        runs = [
            (f"{w} workers" if w else "one process", w, Path(tmp) / f"run{w}") for w in args.workers
        ]
        runs.append(("nothing changed", args.workers[-1], runs[-1][2]))
        for name, workers, run in runs:
            with PeakMemory() as memory:
                took = prepare_phases(data, run, workers)
            rows.append((name, took, memory.peak))
    n = args.studies
    print(f"\n{n} studies ({rows[0][1]['cached studies']} cached: train + val), 512 x 512 x 40")
    print(
        "| run | check (s) | lungs (s) | cache (s) | total (s) | studies/min | peak RSS (GB) | 1,110 studies (h) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, took, peak in rows:
        total = sum(took[p] for p in PHASES)
        cells = " | ".join(f"{took[p]:.1f}" for p in PHASES)
        hours = total / n * MOSMED_STUDIES / 3600
        print(
            f"| {name} | {cells} | {total:.1f} | {60 * n / total:.1f} | {peak / 1e9:.2f} "
            f"| {hours:.2f} |"
        )


if __name__ == "__main__":
    main()
