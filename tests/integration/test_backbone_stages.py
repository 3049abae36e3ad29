"""Every backbone (with a recalibration) goes through pretrain -> finetune -> predict (CPU, tiny)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volseg.cli import main
from volseg.data.mosmed import Datalist
from volseg.rundir import datalist_path

SMALL = "{filters: [4, 8, 16, 32], strides: [[2, 2, 1], [2, 2, 2], [2, 2, 2]]}"
CASES = [
    ("unet3d", "se", SMALL),
    (
        "resunet3d",
        "ssr",
        "{filters: [4, 8, 16, 32], strides: [[2, 2, 1], [2, 2, 2], [2, 2, 2]], num_res_units: 1}",
    ),
    ("unetpp3d", "none", SMALL),
    (
        "transunet3d",
        "ssr",
        "{widths: [4, 8, 16, 32], strides: [[2, 2, 1], [2, 2, 2], [2, 2, 2]], hidden_size: 32, depth: 1, num_heads: 2}",
    ),
]
CONFIG = """seed: 0
data: {spacing: [5.5, 5.5, 12.0], lungs: dataset, split: {seed: 0, val_fraction: 0.2, test_fraction: 0.25}}
model: {patch_size: [32, 32, 16]}
pretrain: {epochs: 1, iters_per_epoch: 2, batch_size: 2, projector_dims: [32, 32], probe: false}
finetune: {epochs: 1, iters_per_epoch: 2, batch_size: 2, warmup_epochs: 0, use_pseudo: false}
predict: {overlap: 0.25}
"""


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("backbones")
    (root / "cfg.yaml").write_text(CONFIG)
    run = root / "run"
    rc = main(
        [
            "prepare",
            "-c",
            str(root / "cfg.yaml"),
            "--data",
            str(tiny_dataset),
            "--run-dir",
            str(run),
        ]
    )
    assert rc == 0
    return root, run


@pytest.mark.slow
@pytest.mark.parametrize(("name", "recal", "params"), CASES, ids=[c[0] for c in CASES])
def test_pretrain_finetune_predict(
    name: str,
    recal: str,
    params: str,
    prepared: tuple[Path, Path],
    tiny_dataset: Path,
    tmp_path: Path,
) -> None:
    root, prepared_run = prepared
    run = tmp_path / "run"
    shutil.copytree(prepared_run / "prepare", run / "prepare")
    common = [
        "-c", str(root / "cfg.yaml"), "--data", str(tiny_dataset), "--run-dir", str(run),
        "--set", f"model.name={name}", "--set", f"model.recalibration={recal}",
        "--set", f"model.params.{name}={params}",
    ]  # fmt: skip
    assert main(["pretrain", *common]) == 0
    assert main(["finetune", *common]) == 0
    assert json.loads((run / "finetune" / "summary.json").read_text())["init"] == "pretrained"

    test_study = Datalist.load(datalist_path(run)).studies_in("test")[0]
    out = tmp_path / "pred"
    assert (
        main(["predict", "-m", str(run), "-i", str(test_study.image), "-o", str(out), "--no-lungs"])
        == 0
    )
    mask = nib.load(out / f"{test_study.id}_mask.nii.gz")
    src = nib.load(test_study.image)
    assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine)
    voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000.0
    expected_ml = np.count_nonzero(np.asanyarray(mask.dataobj)) * voxel_ml
    reported = json.loads((out / f"{test_study.id}.json").read_text())["lesion_volume_ml"]
    assert reported == pytest.approx(expected_ml, abs=1e-3)
