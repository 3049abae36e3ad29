"""End-to-end predict benchmark: volseg vs a MONAI-reference pipeline, same network, same run.

File in -> mask file out on full-size synthetic MosMed-like studies (512 x 512 x ~40,
0.7 x 0.7 x 8 mm, int16, LAS). The reference is the textbook MONAI chain:
LoadImaged -> EnsureChannelFirstd -> Orientationd -> Spacingd -> ScaleIntensityRanged ->
sliding_window_inference (overlap 0.5) -> Invertd -> SaveImage. volseg runs
``volseg.stages.predict.run_predict`` (decode in a background thread, resampling on the
device, body crop, sliding window, exact inverse). Both use one randomly initialised
network built from the registry, and the same ROI; lung restriction is off in both so the
work is comparable. Prints a table with s/volume, volumes/s, the speed ratio and the Dice
between the two pipelines' masks.

    python bench/predict_bench.py --studies 4 --model transunet3d \
        --params '{"widths": [8, 16, 32, 64], "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2]],
                   "hidden_size": 96, "depth": 2, "num_heads": 4}' --roi 64 64 16   # CPU
    python bench/predict_bench.py --studies 16 --model transunet3d --roi 128 128 32   # GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch


def make_studies(out: Path, count: int, seed: int) -> list[Path]:
    from volseg.data.synth import synthesize_dataset

    if not (out / "manifest.csv").exists():  # reuse a dataset made by an earlier run
        synthesize_dataset(out, preset="mosmed", seed=seed)
    by_category = [sorted(d.glob("*.nii.gz")) for d in sorted((out / "studies").iterdir())]
    files = [f for group in zip_longest(*by_category) for f in group if f is not None]
    return files[:count]  # round-robin over CT-0..CT-4, so most have lesions


def reference_pipeline(files, model, spacing, hu_window, roi, out_dir: Path, device) -> float:
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
            data["pred"] = sliding_window_inference(x, roi, 4, model, overlap=0.5, mode="gaussian")[
                0
            ].cpu()
        item = post(data)
        saver(item["pred"], meta_data=item["pred"].meta)
    return time.perf_counter() - start


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--model", default="unet3d")
    parser.add_argument("--params", default="{}", help="network constructor arguments (JSON)")
    parser.add_argument("--roi", type=int, nargs=3, default=[96, 96, 32])
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 5.0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--bundle",
        default=None,
        help="a trained model bundle or run dir (its spacing is used); default: random net",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import nibabel as nib

    from volseg.bundle import load_bundle, resolve_bundle_path, save_bundle
    from volseg.models import build_model
    from volseg.recipe import Recipe
    from volseg.stages.predict import run_predict

    work = Path(args.workdir or tempfile.mkdtemp(prefix="volseg-bench-"))
    files = make_studies(work / "data", args.studies, seed=0)
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
    same = {"roi_size": tuple(args.roi), "overlap": 0.5, "sw_batch_size": 4, "min_component_mm3": 0}

    # warm-up both paths on the first file (imports, cuDNN autotune)
    run_predict(bundle_path, files[:1], work / "warm", use_lungs=False, device=args.device, **same)
    reference_pipeline(
        files[:1], model, args.spacing, (-1000.0, 400.0), args.roi, work / "warm_ref", device
    )

    t0 = time.perf_counter()
    run_predict(bundle_path, files, work / "volseg", use_lungs=False, device=args.device, **same)
    t_volseg = time.perf_counter() - t0
    t_ref = reference_pipeline(
        files, model, args.spacing, (-1000.0, 400.0), args.roi, work / "ref", device
    )

    dices, truth_volseg, truth_ref = [], [], []
    for f in files:
        sid = f.name.replace(".nii.gz", "")
        a = np.asarray(nib.load(work / "volseg" / f"{sid}_mask.nii.gz").dataobj)
        b = np.asarray(nib.load(work / "ref" / f"{sid}_mask.nii.gz").dataobj).squeeze()
        truth = np.asarray(nib.load(work / "data" / "truth" / f"{sid}_mask.nii.gz").dataobj)
        dices.append(dice(a, b))
        truth_volseg.append(dice(a, truth))
        truth_ref.append(dice(b, truth))
    n = len(files)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU ({torch.get_num_threads()} threads)")
    )
    print(
        f"\npredict benchmark: {n} studies 512x512x~40 -> spacing {args.spacing}, "
        f"model {args.model}, roi {args.roi}, {device_name}"
    )
    print(f"{'pipeline':<18}{'s/volume':>10}{'volumes/s':>12}{'Dice vs truth':>15}")
    print(f"{'MONAI reference':<18}{t_ref / n:>10.2f}{n / t_ref:>12.3f}{np.mean(truth_ref):>15.4f}")
    print(f"{'volseg':<18}{t_volseg / n:>10.2f}{n / t_volseg:>12.3f}{np.mean(truth_volseg):>15.4f}")
    print(
        f"speed-up volseg / reference: {t_ref / t_volseg:.2f}x; "
        f"mask Dice volseg vs reference: mean {np.mean(dices):.4f}, min {np.min(dices):.4f}"
    )


if __name__ == "__main__":
    main()
