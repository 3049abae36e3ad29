"""End-to-end predict benchmark: volseg vs a MONAI-reference pipeline, same network, same run.

File in -> mask file out on full-size synthetic MosMed-like studies (512 x 512 x ~40,
0.7 x 0.7 x 8 mm, int16, LAS). The reference is the textbook MONAI chain:
LoadImaged -> EnsureChannelFirstd -> Orientationd -> Spacingd -> ScaleIntensityRanged ->
sliding_window_inference (--overlap, 0.5 by default) -> Invertd -> SaveImage. volseg runs
``volseg.stages.predict.run_predict`` (decode ahead and write behind in threads, resampling
on the device, body crop, sliding window, exact inverse). Both use one network (a trained
bundle, or a randomly initialised one from the registry) and the same ROI. volseg runs twice:
without lung restriction (the work the reference does) and as the whole job (lung masks,
restriction, quantification, JSON), and the whole job once more under bf16 autocast
(``precision="bf16"``; on a CPU too). Prints per pipeline s/volume, volumes/s, the ratio to
the reference, peak memory, Dice against the synthetic truth and against the reference's
masks, and volseg's seconds per phase (summed over threads, which overlap).

    python bench/predict_bench.py --studies 4 --model transunet3d \
        --params '{"widths": [8, 16, 32, 64], "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2]],
                   "hidden_size": 96, "depth": 2, "num_heads": 4}' --roi 64 64 16   # CPU
    python bench/predict_bench.py --studies 16 --model transunet3d --roi 128 128 32   # GPU
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch


def make_studies(out: Path, count: int, seed: int) -> list[Path]:
    from volseg.data.synth import synthesize_dataset

    if not (out / "manifest.csv").exists():  # reuse a dataset made by an earlier run
        synthesize_dataset(out, preset="mosmed", seed=seed)
    by_category = [sorted(d.glob("*.nii.gz")) for d in sorted((out / "studies").iterdir())]
    files = [f for group in zip_longest(*by_category) for f in group if f is not None]
    return files[:count]  # round-robin over CT-0..CT-4, so most have lesions


def repeated_inputs(files: list[Path], repeat: int, folder: Path) -> list[Path]:
    """``files`` ``repeat`` times over, as hard links named ``<id>_r<k>.nii.gz`` in ``folder``,
    copy 0 of every file first and in order: enough studies to time a fast pipeline past its
    start-up without synthesising more."""
    if repeat == 1:
        return files
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(repeat):
        for f in files:
            link = folder / f.name.replace(".nii.gz", f"_r{k}.nii.gz")
            if not link.exists():
                link.hardlink_to(f)
            out.append(link)
    return out


def reference_pipeline(
    files, model, spacing, hu_window, roi, out_dir: Path, device, overlap: float = 0.5
) -> float:
    """The MONAI-reference predict chain; returns wall seconds for all files."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImage,
        ScaleIntensityRanged,
        Spacingd,
    )

    pre = Compose(
        [
            LoadImaged(keys="image", image_only=False),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
            ScaleIntensityRanged(
                keys="image",
                a_min=hu_window[0],
                a_max=hu_window[1],
                b_min=0.0,
                b_max=1.0,
                clip=True,
            ),
        ]
    )
    post = Compose(
        [
            Activationsd(keys="pred", sigmoid=True),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", threshold=0.5),
        ]
    )
    saver = SaveImage(
        output_dir=str(out_dir),
        output_postfix="mask",
        separate_folder=False,
        output_dtype=np.uint8,
        print_log=False,
    )
    start = time.perf_counter()
    for f in files:
        data = pre({"image": str(f)})
        with torch.inference_mode():
            x = data["image"].unsqueeze(0).to(device)
            data["pred"] = sliding_window_inference(
                x, roi, 4, model, overlap=overlap, mode="gaussian"
            )[0].cpu()
        item = post(data)
        saver(item["pred"], meta_data=item["pred"].meta)
    return time.perf_counter() - start


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


@dataclass
class Measured:
    """One timed pipeline run: wall seconds, peaks, phase seconds (volseg only)."""

    name: str
    volumes: int = 0
    seconds: float = 0.0
    peak_host_mb: float = 0.0
    peak_device_mb: float | None = None
    phases: dict[str, float] = field(default_factory=dict)


def _rss_mb() -> float:
    """This process's resident memory now (MB), from /proc (Linux)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


@contextmanager
def measured(name: str, device: torch.device) -> Iterator[Measured]:
    """Time the block; its peak resident memory sampled every 5 ms (``ru_maxrss`` is the
    whole process's, earlier runs included) and, on CUDA, its peak allocated device memory."""
    out = Measured(name)
    peak = [_rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sampler.start()
    start = time.perf_counter()
    try:
        yield out
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            out.peak_device_mb = torch.cuda.max_memory_allocated(device) / 2**20
        out.seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        out.peak_host_mb = max(peak[0], _rss_mb())


def volseg_run(
    run_predict: Callable[..., Any],
    name: str,
    bundle: Path,
    files: list[Path],
    out: Path,
    device: torch.device,
    **kw: Any,
) -> Measured:
    """``run_predict`` on ``files`` into ``out``, timed, with its phase split when this
    volseg records one (``timings``; older versions do not)."""
    times = None
    if "timings" in inspect.signature(run_predict).parameters:
        from volseg.inference.timing import PhaseTimes

        times = PhaseTimes()
        kw["timings"] = times
    with measured(name, device) as m:
        run_predict(bundle, files, out, device=str(device), **kw)
    m.volumes = len(files)
    if times is not None:
        m.phases = dict(times.seconds)
    return m


def masks(folder: Path, ids: list[str]) -> list[np.ndarray]:
    import nibabel as nib

    return [np.asarray(nib.load(folder / f"{i}_mask.nii.gz").dataobj).squeeze() for i in ids]


def print_table(header: str, runs: list[Measured], ref: Measured, dices: dict) -> None:
    """The benchmark's table: one row per pipeline (each over its own number of volumes),
    then volseg's phase split."""
    print(f"\n{header}")
    w = max(26, *(len(m.name) + 2 for m in runs))  # the name column
    cols = f"{'pipeline':<{w}}{'s/volume':>9}{'volumes/s':>10}{'x ref':>7}{'peak MB':>9}"
    cuda = ref.peak_device_mb is not None
    print(cols + (f"{'dev MB':>8}" if cuda else "") + f"{'Dice truth':>11}{'Dice ref':>9}")
    for m in runs:
        truth, vs_ref = dices[m.name]
        per_volume = m.seconds / m.volumes
        line = (
            f"{m.name:<{w}}{per_volume:>9.3f}{1 / per_volume:>10.3f}"
            f"{ref.seconds / ref.volumes / per_volume:>7.2f}{m.peak_host_mb:>9.0f}"
        )
        line += f"{m.peak_device_mb:>8.0f}" if cuda and m.peak_device_mb is not None else ""
        print(line + f"{truth:>11.4f}{vs_ref:>9.4f}")
    phased = [m for m in runs if m.phases]
    if not phased:
        return
    names = list(phased[0].phases)
    print("\nseconds per volume by phase (summed over threads; they overlap)")
    print(f"{'pipeline':<{w}}" + "".join(f"{p:>12}" for p in names) + f"{'sum':>8}{'wall':>8}")
    for m in phased:
        n = m.volumes
        cells = "".join(f"{m.phases[p] / n:>12.3f}" for p in names)
        print(f"{m.name:<{w}}{cells}{sum(m.phases.values()) / n:>8.3f}{m.seconds / n:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="volseg predicts each study this many times (hard-linked copies; the MONAI "
        "reference once): a fast pipeline timed past its start-up",
    )
    parser.add_argument("--model", default="unet3d")
    parser.add_argument("--params", default="{}", help="network constructor arguments (JSON)")
    parser.add_argument("--roi", type=int, nargs=3, default=[96, 96, 32])
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="sliding-window overlap, every pipeline"
    )
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 5.0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--decoders", type=int, default=0, help="decode threads (0: volseg's)")
    parser.add_argument("--writers", type=int, default=0, help="write threads (0: volseg's)")
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=0,
        help="also run the whole job with decoding and lung masks in N worker processes",
    )
    parser.add_argument(
        "--wide-writers",
        type=int,
        default=0,
        help="writer threads (clean-up and files) of that decode-processes row (0: as the others)",
    )
    parser.add_argument(
        "--bundle",
        default=None,
        help="a trained model bundle or run dir (its spacing is used); default: random net",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if not 0 <= args.overlap < 1:
        parser.error("--overlap must be in [0, 1)")
    logging.basicConfig(level=logging.WARNING)

    from volseg.bundle import load_bundle, resolve_bundle_path, save_bundle
    from volseg.models import build_model
    from volseg.recipe import Recipe
    from volseg.stages.predict import run_predict

    work = Path(args.workdir or tempfile.mkdtemp(prefix="volseg-bench-"))
    files = make_studies(work / "data", args.studies, seed=0)
    inputs = repeated_inputs(files, args.repeat, work / "repeated")
    device = torch.device(args.device)
    if args.bundle:
        bundle_path = resolve_bundle_path(args.bundle)
        trained = load_bundle(bundle_path, device)
        args.spacing = list(trained.recipe.spacing)
        args.model = trained.model_name
    else:
        torch.manual_seed(0)
        params = {"in_channels": 1, "out_channels": 1, **json.loads(args.params)}
        bundle_path = save_bundle(
            work / "run" / "model.pt",
            build_model(args.model, **params),
            args.model,
            params,
            Recipe(args.spacing, (-1000.0, 400.0), tuple(args.roi)),
            {},
        )
        trained = load_bundle(bundle_path, device)
    model = trained.model
    whole_job = {"roi_size": tuple(args.roi), "overlap": args.overlap, "sw_batch_size": 4}
    same = {**whole_job, "min_component_mm3": 0}
    import volseg.stages.predict as predict_stage

    if args.decoders or args.writers:  # pipeline widths to try (the defaults were chosen so)
        predict_stage.DECODERS = args.decoders or predict_stage.DECODERS
        predict_stage.WRITERS = args.writers or predict_stage.WRITERS
    hu = (-1000.0, 400.0)

    # warm-up every path on the first file (imports, cuDNN autotune)
    volseg_run(run_predict, "warm", bundle_path, files[:1], work / "warm", device, **same)
    volseg_run(
        run_predict, "warm", bundle_path, files[:1], work / "warm_lungs", device, **whole_job
    )
    reference_pipeline(
        files[:1], model, args.spacing, hu, args.roi, work / "warm_ref", device, args.overlap
    )
    from volseg.inference.predictor import PredictOptions

    with_precision = "precision" in PredictOptions.__dataclass_fields__  # volseg that has it
    if with_precision:
        volseg_run(
            run_predict,
            "warm",
            bundle_path,
            files[:1],
            work / "warm_bf16",
            device,
            **whole_job,
            precision="bf16",
        )

    writers = predict_stage.WRITERS
    pipelines = [  # (name, output folder, writer threads, run_predict arguments)
        ("volseg, no lungs", "volseg", writers, {"use_lungs": False, **same}),
        ("volseg, whole job", "whole", writers, whole_job),
    ]
    if with_precision:
        pipelines.append(
            ("volseg, whole job, bf16", "whole_bf16", writers, {**whole_job, "precision": "bf16"})
        )
    if args.decode_workers:
        wide = args.wide_writers or writers
        name = f"volseg, whole job, {args.decode_workers} decode processes, {wide} writers"
        pipelines.append(
            (name, "whole_procs", wide, {**whole_job, "decode_workers": args.decode_workers})
        )
    runs = []
    for name, folder, width, kw in pipelines:
        predict_stage.WRITERS = width
        runs.append(volseg_run(run_predict, name, bundle_path, inputs, work / folder, device, **kw))
    predict_stage.WRITERS = writers
    folders = [work / folder for _, folder, _, _ in pipelines]
    with measured("MONAI reference", device) as ref:
        reference_pipeline(
            files, model, args.spacing, hu, args.roi, work / "ref", device, args.overlap
        )
    ref.volumes = len(files)

    ids = [f.name.replace(".nii.gz", "") for f in files]
    copies = [f.name.replace(".nii.gz", "") for f in inputs[: len(files)]]  # copy 0 of each
    truth = masks(work / "data" / "truth", ids)
    theirs = masks(work / "ref", ids)
    dices = {
        ref.name: (float(np.mean([dice(b, t) for b, t in zip(theirs, truth, strict=True)])), 1.0)
    }
    for m, folder in zip(runs, folders, strict=True):
        ours = masks(folder, copies)
        dices[m.name] = (
            float(np.mean([dice(a, t) for a, t in zip(ours, truth, strict=True)])),
            float(np.mean([dice(a, b) for a, b in zip(ours, theirs, strict=True)])),
        )
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    header = (
        f"predict benchmark: {len(files)} studies 512x512x~40 (volseg: each x{args.repeat}) "
        f"-> spacing {args.spacing}, "
        f"model {args.model}, roi {args.roi}, overlap {args.overlap}, {device_name}; "
        f"volseg pipeline: {predict_stage.DECODERS} decode thread(s), "
        f"{predict_stage.WRITERS} writer thread(s)"
    )
    print_table(header, [ref, *runs], ref, dices)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwhole process peak (ru_maxrss): {rss:.0f} MB")


if __name__ == "__main__":
    main()
