"""Ground glass vs consolidation: the density split against the synthetic truth.

For synthetic studies of CT-1..CT-4, the true lesion mask is split by
:func:`volseg.quantify.lesion_types` at several consolidation densities and compared with
the generator's own types (``lesion_types``: consolidation where more than half of a
voxel is solid): Dice per class and the volume error of each class, so the split is
measured apart from the segmentation. Prints one table.

    python bench/lesion_types_bench.py --preset demo --seeds 3
"""

from __future__ import annotations

import argparse

import numpy as np


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hu", type=float, nargs="+", default=[-450, -400, -300, -200, -100])
    args = parser.parse_args()

    from volseg.data.synth import synthesize_study
    from volseg.quantify import CONSOLIDATION, GGO, lesion_types

    rows: dict[float, list[tuple[float, float, float, float]]] = {h: [] for h in args.hu}
    for category in ("CT-1", "CT-2", "CT-3", "CT-4"):
        for seed in range(args.seeds):
            study = synthesize_study(args.preset, category, seed)
            truth = study.lesion_types
            for h in args.hu:
                types = lesion_types(study.lesion, study.image, h)
                out = []
                for code in (GGO, CONSOLIDATION):
                    a, b = types == code, truth == code
                    err = 100.0 * (float(a.sum()) - float(b.sum())) / max(float(b.sum()), 1.0)
                    out += [_dice(a, b), err]
                rows[h].append(tuple(out))  # type: ignore[arg-type]
    n = 4 * args.seeds
    print(f"{args.preset}: {n} studies (CT-1..CT-4 x {args.seeds} seeds), split of the true mask")
    print(
        f"{'HU':>6s} {'GGO Dice':>9s} {'GGO vol err %':>14s} {'cons Dice':>10s} {'cons vol err %':>15s}"
    )
    for h, values in rows.items():
        m = np.mean(np.asarray(values), axis=0)
        print(f"{h:6.0f} {m[0]:9.3f} {m[1]:14.1f} {m[2]:10.3f} {m[3]:15.1f}")


if __name__ == "__main__":
    main()
