"""Can the fine-tuning data path feed the GPU? Patches/s of the real stage's dataset.

Writes N full-size synthetic ``mosmed`` studies (512 x 512 x 40 at 0.7 x 0.7 x 8 mm) with
their lesion masks, prepares them with ``configs/mosmed.yaml`` (cache at 1.5 x 1.5 x 5 mm)
and draws training batches from the fine-tuning stage's own dataset
(:class:`volseg.data.patches.SegPatchDataset`: lesion-biased crops of
``model.patch_size`` = 128 x 128 x 32, MONAI augmentation seeded per sample index) through
the stage's DataLoader (:func:`volseg.engine.make_loader`), batch ``finetune.batch_size``,
for each DataLoader worker count in ``--workers``; and, in the main process, the crop alone
and the crop with augmentation. Each row is timed for both augmentation paths
(``finetune.augment_on``): ``worker`` (MONAI, per sample in the loader) and ``device``
(the loader crops and draws parameters; :func:`volseg.data.batch_augment.augment_batch`
augments the batch after it is moved, on the CPU and, when there is one, on CUDA: timed to
the end of the augmentation). Prints patches/s, the ratio to the worker path at the same
worker count, and, from the one-process worker-path rate, how many CPU cores would feed
the network-alone rate ``--target`` (patches/s; default 46, the H100 compile +
channels-last figure in bench/README.md).

    python bench/data_path_bench.py --studies 4 --batches 20 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
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


def prepared_config(tmp: Path, studies: int, overrides: Sequence[str] = ()):  # noqa: ANN201
    """``configs/mosmed.yaml`` over ``studies`` fresh synthetic studies in ``tmp``, all in
    the training split, prepared (lung masks and cache) and ready for the stage's dataset."""
    from volseg.config import load_config
    from volseg.stages.prepare import run_prepare

    data, run = tmp / "data", tmp / "run"
    write_studies(data, studies)
    split = ["data.split.val_fraction=0.0", "data.split.test_fraction=0.0"]
    cfg = load_config(
        ROOT / "configs" / "mosmed.yaml", [*split, *overrides], data_root=data, run_dir=run
    )
    run_prepare(cfg)
    return cfg


def stage_dataset(cfg, augment: bool, augment_on: str = "worker"):  # noqa: ANN001, ANN201
    """The fine-tuning stage's patch dataset over every cached labeled study."""
    from volseg.data.patches import SegPatchDataset
    from volseg.stages.common import load_prepared

    prepared = load_prepared(cfg)
    vols = [v for v in prepared.volumes.values() if v.has_label]
    return SegPatchDataset(
        vols, cfg.model.patch_size, seed=cfg.seed, augment=augment, augment_on=augment_on
    )


def device_step(device: str) -> Callable[[dict], None]:
    """What the training step does with a device-path batch before the network: move it,
    augment it there, wait for the device."""
    import torch

    from volseg.data.batch_augment import PARAMS_KEY, augment_batch

    def step(batch: dict) -> None:
        params = batch.pop(PARAMS_KEY)
        moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        augment_batch(moved, params)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def loader_rate(
    dataset,  # noqa: ANN001
    batch: int,
    batches: int,
    workers: int,
    step: Callable[[dict], None] | None = None,
) -> float:
    """Patches/s through the stage's DataLoader, each batch then handed to ``step`` (first
    batch untimed: worker start-up, CUDA warm-up)."""
    from volseg.engine import StepSampler, make_loader

    loader = make_loader(dataset, StepSampler(0, batches + 1, batch), workers)
    it = iter(loader)
    first = next(it)
    if step is not None:
        step(first)
    start = time.perf_counter()
    count = 0
    for item in it:
        if step is not None:
            step(item)
        count += 1
    return count * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=46.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = prepared_config(Path(tmp), args.studies)
        import torch

        batch = cfg.finetune.batch_size
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        worker = stage_dataset(cfg, True)
        device = stage_dataset(cfg, True, "device")

        def rate(dataset, workers: int, step=None) -> float:  # noqa: ANN001
            return loader_rate(dataset, batch, args.batches, workers, step)

        rows = [("crop only", "-", 0, rate(stage_dataset(cfg, False), 0))]
        for workers in sorted(set(args.workers) | {0}):
            rows.append(("worker: crop + MONAI", "loader", workers, rate(worker, workers)))
            rows.append(("device: crop + draw", "-", workers, rate(device, workers)))
            for where in devices:
                step = device_step(where)
                rows.append(
                    ("device: + augment_batch", where, workers, rate(device, workers, step))
                )
    baseline = {w: r for name, _, w, r in rows if name.startswith("worker")}
    one_core = baseline[0]
    print(f"\npatch {tuple(cfg.model.patch_size)}, batch {batch}, {args.studies} studies")
    print("| data path | augmented on | DataLoader workers | patches/s | x worker path |")
    print("|---|---|---:|---:|---:|")
    for name, where, workers, rate in rows:
        print(f"| {name} | {where} | {workers} | {rate:.2f} | {rate / baseline[workers]:.2f} |")
    print(
        f"\none core (crop + augmentation): {one_core:.2f} patches/s, so about "
        f"{args.target / one_core:.0f} cores to feed {args.target:g} patches/s"
    )


if __name__ == "__main__":
    main()
