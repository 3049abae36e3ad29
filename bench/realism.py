"""Realism report: synthetic healthy (CT-0) scans against real chest CTs, feature by feature.

Each real CT in ``../shared/data/real`` is resampled to the preset's voxel size (low-pass,
then linear: what a scanner with those voxels would measure) with its lung mask (the
reference where one exists, else ``volseg lungs``); synthetic CT-0 studies of the preset
are made with the current generator. Prints the features of every scan
(:mod:`volseg.evaluation.realism`), then each real CT's distance to the synthetic scans
(mean over them, and to the nearest of them: does the synthetic world hold a scan like
this one?), and the mean over real CTs.

    python bench/realism.py --preset demo --studies 3
    python bench/realism.py --preset mosmed --studies 2 --json realism.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
SCANS = ("example_ct_sm", "lidc_idri_0001_chest_ct", "4dlung_113_chest_ct")


def real_features(spacing: tuple[float, float, float]) -> dict:
    import nibabel as nib

    from volseg.data.lungs import lung_mask
    from volseg.data.variants import resampled
    from volseg.evaluation.realism import features

    out = {}
    for scan in SCANS:
        path = REAL / f"{scan}.nii.gz"
        if not path.exists():
            continue
        img = nib.load(str(path))
        hu = np.asanyarray(img.dataobj)
        ref_path = REAL / f"{scan}_lungs.nii.gz"
        lungs = (
            np.asanyarray(nib.load(str(ref_path)).dataobj)
            if ref_path.exists()
            else lung_mask(hu, img.affine).mask
        )
        v = resampled(hu, lungs, img.affine, spacing)
        out[scan] = features(v.image, v.reference, v.affine)
    return out


def synthetic_features(preset: str, studies: int) -> dict:
    from volseg.data.synth import synthesize_study
    from volseg.evaluation.realism import features

    out = {}
    for seed in range(studies):
        study = synthesize_study(preset, "CT-0", seed)
        out[f"{preset} CT-0 seed {seed}"] = features(study.image, study.lungs, study.affine)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write features and distances here")
    args = parser.parse_args()

    from volseg.data.synth import get_preset
    from volseg.evaluation.realism import distances

    spacing = get_preset(args.preset).spacing
    real = real_features(spacing)
    synth = synthetic_features(args.preset, args.studies)
    keys = list(next(iter(synth.values())).summary())
    print(f"features at {spacing} mm")
    print(f"{'scan':34s} " + " ".join(f"{k[:13]:>13s}" for k in keys))
    for name, f in {**real, **synth}.items():
        print(f"{name[:34]:34s} " + " ".join(f"{v:13.3f}" for v in f.summary().values()))
    rows, nearest = {}, {}
    for name, f in real.items():
        d = [distances(f, g) for g in synth.values()]
        rows[name] = {k: float(np.mean([x[k] for x in d])) for k in d[0]}
        nearest[name] = {k: float(np.min([x[k] for x in d])) for k in d[0]}
    for title, table in (("mean over them", rows), ("the nearest of them", nearest)):
        if not table:
            continue
        table["mean over real CTs"] = {
            k: float(np.mean([r[k] for r in table.values()])) for k in next(iter(table.values()))
        }
        dkeys = list(next(iter(table.values())))
        print(f"\ndistance to the synthetic scans ({title})")
        print(f"{'real CT':34s} " + " ".join(f"{k[:16]:>16s}" for k in dkeys))
        for name, r in table.items():
            print(f"{name[:34]:34s} " + " ".join(f"{r[k]:16.3f}" for k in dkeys))
    if args.json:
        payload = {
            "spacing": spacing,
            "features": {n: f.summary() for n, f in {**real, **synth}.items()},
            "distances": {"mean": rows, "nearest": nearest},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
