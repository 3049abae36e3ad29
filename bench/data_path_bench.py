"""Can the fine-tuning data path feed the GPU? Patches/s of the real stage's dataset.

Writes N full-size synthetic ``mosmed`` studies (512 x 512 x 40 at 0.7 x 0.7 x 8 mm) with
their lesion masks, prepares them with ``configs/mosmed.yaml`` (cache at 1.5 x 1.5 x 5 mm)
and draws training batches from the fine-tuning stage's own dataset
(:class:`volseg.data.patches.SegPatchDataset`: lesion-biased crops of
``model.patch_size`` = 128 x 128 x 32, MONAI augmentation seeded per sample index) through
the stage's DataLoader (:func:`volseg.engine.make_loader`), batch ``finetune.batch_size``,
for each DataLoader worker count in ``--workers``; and, in the main process, the crop alone
and the crop with augmentation. Prints patches/s and, from the one-process rate, how many
CPU cores would feed the network-alone rate ``--target`` (patches/s; default 46, the
H100 compile + channels-last figure in bench/README.md).

    python bench/data_path_bench.py --studies 4 --batches 20 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_studies(data: Path, n: int) -> None:
    """``n`` labeled mosmed-preset studies (CT-1..CT-4 round-robin) in MosMed's layout."""
    from volseg.data import layout
    from volseg.data.synth import synthesize_study
    from volseg.io import write_nifti

    for i in range(n):
        category = ("CT-1", "CT-2", "CT-3", "CT-4")[i % 4]
        study = synthesize_study("mosmed", category, i)
        sid = f"study_{i + 1:04d}"
        write_nifti(layout.image_path(data, category, sid), study.image, study.affine)
        write_nifti(layout.mask_path(data, sid), study.lesion, study.affine)


def stage_dataset(cfg, augment: bool):  # noqa: ANN001, ANN201 (bench helper)
    """The fine-tuning stage's patch dataset over every cached labeled study."""
    from volseg.data.patches import SegPatchDataset
    from volseg.stages.common import load_prepared

    prepared = load_prepared(cfg)
    vols = [v for v in prepared.volumes.values() if v.has_label]
    return SegPatchDataset(vols, cfg.model.patch_size, seed=cfg.seed, augment=augment)


def loader_rate(dataset, batch: int, batches: int, workers: int) -> float:  # noqa: ANN001
    """Patches/s through the stage's DataLoader (first batch untimed: worker start-up)."""
    from volseg.engine import StepSampler, make_loader

    loader = make_loader(dataset, StepSampler(0, batches + 1, batch), workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    count = sum(1 for _ in it)
    return count * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=46.0)
    args = parser.parse_args()

    from volseg.config import load_config
    from volseg.stages.prepare import run_prepare

    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        write_studies(data, args.studies)
        overrides = ["data.split.val_fraction=0.0", "data.split.test_fraction=0.0"]
        cfg = load_config(ROOT / "configs" / "mosmed.yaml", overrides, data_root=data, run_dir=run)
        run_prepare(cfg)
        batch = cfg.finetune.batch_size
        rows = []
        for augment in (False, True):
            rate = loader_rate(stage_dataset(cfg, augment), batch, args.batches, 0)
            rows.append(("crop" + (" + augmentation" if augment else " only"), 0, rate))
        augmented = stage_dataset(cfg, True)
        for workers in args.workers:
            if workers:
                rows.append(
                    (
                        "stage data path",
                        workers,
                        loader_rate(augmented, batch, args.batches, workers),
                    )
                )
    one_core = rows[1][2]
    print(f"\npatch {tuple(cfg.model.patch_size)}, batch {batch}, {args.studies} studies")
    print("| data path | DataLoader workers | patches/s |")
    print("|---|---:|---:|")
    for name, workers, rate in rows:
        print(f"| {name} | {workers} | {rate:.2f} |")
    print(
        f"\none core (crop + augmentation): {one_core:.2f} patches/s, so about "
        f"{args.target / one_core:.0f} cores to feed {args.target:g} patches/s"
    )


if __name__ == "__main__":
    main()
