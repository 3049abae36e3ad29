"""Bad inputs over every command: exit 2, one line naming the file or key, no traceback,
nothing left behind, inputs unchanged (issue #16, one section per class of fault).

Each test builds its bad input in ``tmp_path`` and runs the CLI in-process (``main``), or in
a subprocess where the fault is an operating-system limit (a file-size limit standing in
for a full disk). Lines of the log format are not counted: the promise is one error line.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.oracle import OracleNet
from tests.unit.data.test_mosmed import make_mosmed, phantom
from tests.unit.pipeline.test_run import FakePipeline
from volseg import rundir
from volseg.cli import build_parser, main
from volseg.errors import cause_text
from volseg.models import registry
from volseg.pipeline import manifest as mf
from volseg.pipeline import plan as plan_mod
from volseg.pipeline import run as orch
from volseg.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
AFFINE = np.diag([-5.0, 5.0, 10.0, 1.0])
REAL_CHECKS = {spec.name: spec.check for spec in plan_mod.STAGES}

# ----------------------------------------------------------------------------- helpers


def cli(capfd: pytest.CaptureFixture, *argv: object) -> tuple[int, list[str]]:
    """Run ``volseg ARGV`` in-process: ``(exit code, stderr lines that are not log lines)``.

    ``capfd`` also catches what C libraries (ITK, GDCM) print on file descriptor 2.
    """
    capfd.readouterr()
    rc = main([str(a) for a in argv])
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    return rc, [ln for ln in err.splitlines() if ln.strip() and not LOG_LINE.match(ln)]


def cli_limited(*argv: object, max_file_bytes: int = 64) -> tuple[int, list[str]]:
    """Run ``volseg ARGV`` in a subprocess that cannot write a file past ``max_file_bytes``
    (RLIMIT_FSIZE: every write beyond fails with EFBIG, as on a full disk)."""
    import resource

    def limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, hard))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "volseg", *(str(a) for a in argv), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
        timeout=600,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    return proc.returncode, lines


def one_error(rc: int, lines: list[str], *needles: object) -> None:
    """Exit code 2 and exactly one error line containing every needle."""
    assert rc == 2, lines
    assert len(lines) == 1, lines
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def tree(path: Path) -> dict[str, str | None]:
    """Every file (its SHA-256) and folder (None) under ``path``; empty when absent."""
    if not path.exists():
        return {}
    out: dict[str, str | None] = {".": None}
    for p in sorted(path.rglob("*")):
        key = p.relative_to(path).as_posix()
        out[key] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def chest(path: Path, seed: int = 0) -> Path:
    """A small chest-like CT in HU (air, body, two lungs): lungs and predict accept it."""
    return save(path, phantom(seed=seed)[0])


def save_with_sform(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``affine`` verbatim as the sform (nibabel refuses to build such an image)."""
    img = nib.Nifti1Image(data, AFFINE)
    img.header["qform_code"] = 0
    img.header["sform_code"] = 1
    img.header["srow_x"], img.header["srow_y"], img.header["srow_z"] = affine[:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, None, header=img.header), str(path))
    return path


def _singular(path: Path) -> None:
    affine = AFFINE.copy()
    affine[:3, 1] = affine[:3, 0]
    save_with_sform(path, phantom()[0], affine)


def _nan_affine(path: Path) -> None:
    affine = AFFINE.copy()
    affine[0, 0] = np.nan
    save_with_sform(path, phantom()[0], affine)


def _zero_axis(path: Path) -> None:
    affine = AFFINE.copy()
    affine[:3, 2] = 0.0
    save_with_sform(path, phantom()[0], affine)


def _pixdim_zero(path: Path) -> None:
    """pixdim[1] = 0 as stored (nibabel would read it as 1 mm)."""
    chest(path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1] of the NIfTI-1 header
    raw[252:254] = struct.pack("<h", 1)  # qform_code 1: the affine comes from pixdim
    raw[254:256] = struct.pack("<h", 0)  # sform_code 0
    path.write_bytes(gzip.compress(bytes(raw)))


def _empty_axis(path: Path) -> None:
    save(path, np.zeros((48, 40, 0), np.int16))


def _rgb(path: Path) -> None:
    save(path, np.zeros((48, 40, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))


def _complex(path: Path) -> None:
    save(path, phantom()[0].astype(np.complex64))


GEOMETRY_FAULTS = {  # and header faults: a data type that is not one real value per voxel
    "rgb_data": (_rgb, "not a real number"),
    "complex_data": (_complex, "not a real number"),
    "singular_affine": (_singular, "singular"),
    "nan_affine": (_nan_affine, "NaN"),
    "zero_length_voxel_axis": (_zero_axis, "zero-length voxel axis"),
    "pixdim_zero": (_pixdim_zero, "pixdim"),
    "empty_dimension": (_empty_axis, "empty image"),
}


def _nan_voxels(path: Path) -> None:
    data = phantom()[0].astype(np.float32)
    data[3, 3, 3] = np.nan
    save(path, data)


def _raw_0_4095(path: Path) -> None:
    save(path, (phantom()[0].astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16))


def _all_zero(path: Path) -> None:
    save(path, np.zeros((48, 40, 10), np.int16))


CONTENT_FAULTS = {
    "nan_voxels": (_nan_voxels, "NaN"),
    "raw_0_4095": (_raw_0_4095, "no negative values"),
    "all_zero": (_all_zero, "every voxel is 0"),
}


def dicom_series(folder: Path, n: int = 8) -> list[Path]:
    """A DICOM series of ``n`` evenly spaced 24 x 20 slices (air, lung, a bright blob)."""
    from tests.dicom_series import write_ct_series

    arr = np.full((n, 20, 24), -850, dtype=np.int16)  # (z, y, x)
    arr[:, :3, :] = -1000
    arr[n // 2, 8:12, 10:14] = 300
    write_ct_series(folder, arr, spacing=(5.0, 5.0, 5.0), origin=(0.0, 0.0, 0.0))
    return [folder / f"{k:03d}.dcm" for k in range(n)]


@pytest.fixture()
def oracle_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model bundle whose network marks bright voxels (registered for this test only)."""
    from volseg.bundle import save_bundle

    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    return save_bundle(
        tmp_path / "model" / "model.pt",
        OracleNet(),
        "oracle",
        {"level": 0.6},
        Recipe((5.0, 5.0, 10.0), (-1000, 400), (16, 16, 8)),
        {"overlap": 0.25, "min_component_mm3": 0},
    )


@pytest.fixture()
def unet_bundle(tmp_path: Path) -> Path:
    """A tiny real registered network's bundle, loadable in a subprocess."""
    from volseg.bundle import save_bundle
    from volseg.models import build_model

    params = {"in_channels": 1, "out_channels": 1, "filters": [2, 4, 8], "strides": [2, 2]}
    return save_bundle(
        tmp_path / "unet" / "model.pt",
        build_model("unet3d", **params),
        "unet3d",
        params,
        Recipe((5.0, 5.0, 10.0), (-1000, 400), (16, 16, 8)),
        {"overlap": 0.25},
    )


@pytest.fixture()
def readonly_dir(tmp_path: Path):
    """A folder nothing can be created in (chmod 555; as root, the immutable attribute)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.geteuid() == 0 and shutil.which("chattr"):
        immutable = (
            subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        )
    probe = folder / "probe"
    try:
        probe.touch()
    except OSError:
        pass
    else:
        probe.unlink()
        pytest.skip("cannot make a read-only folder here (root without chattr)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def _cause_of_readonly(line: str) -> bool:
    return os.strerror(errno.EACCES) in line or os.strerror(errno.EPERM) in line


def _config(tmp_path: Path, text: str = "seed: 0\n") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ===================================================== 1. finished stages are never lost


@pytest.fixture()
def pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePipeline:
    """Fake stages (tests/unit/pipeline/test_run.py) with the real checks of gan,
    pretrain, finetune and evaluate (prepare's would read the fake dataset's files)."""
    pipe = FakePipeline(tmp_path, monkeypatch)
    (pipe.data / "masks").mkdir()
    checked = tuple(
        dataclasses.replace(s, check=REAL_CHECKS[s.name] if s.name != "prepare" else None)
        for s in plan_mod.STAGES
    )
    monkeypatch.setattr(plan_mod, "STAGES", checked)
    return pipe


def _run_cli(capfd, pipe: FakePipeline, tmp_path: Path, *extra: str) -> tuple[int, list[str]]:
    return cli(
        capfd,
        "run",
        "-c",
        _config(tmp_path),
        "--data",
        pipe.data,
        "--run-dir",
        pipe.run_dir,
        "--no-progress",
        *extra,
    )


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("model.name=unet4d", ("model.name", "unet4d", "did you mean 'unet3d'")),
        (
            "model.params.transunet3d={widthz: [8, 16]}",
            ("model.params", "widthz", "did you mean 'widths'"),
        ),
        ("model.params.transunet3d={widths: [8]}", ("model.params", "widths")),
        ("model.params={widths: [8]}", ("model.params", "widths", "keyed by backbone")),
        ("gan.generator_params={foo: 1}", ("gan.generator_params", "foo")),
        ("gan.paint_categories=[CT-5]", ("gan.paint_categories", "'CT-1'")),
        ("gan.paint_categories=[]", ("gan.paint_categories", "at least one")),
        ("pretrain.batch_size=1", ("pretrain.batch_size",)),
        ("finetune={n_labeled: 0, use_pseudo: false}", ("finetune.n_labeled",)),
    ],
)
def test_bad_model_setting_touches_no_finished_stage(
    pipe: FakePipeline, tmp_path: Path, capfd, override: str, needles: tuple[str, ...]
) -> None:
    pipe.run()
    pipe.calls.clear()
    before = tree(pipe.run_dir)
    rc, lines = _run_cli(capfd, pipe, tmp_path, "--set", override)
    one_error(rc, lines, *needles)
    assert pipe.calls == []
    assert tree(pipe.run_dir) == before  # config.yaml, manifests, every output unchanged


def test_rerun_keeps_the_finished_stage_until_its_replacement_is_done(
    pipe: FakePipeline,
) -> None:
    pipe.run()
    old = tree(pipe.run_dir / "pretrain")
    saved = pipe.run_dir / rundir.PREVIOUS_DIR / "pretrain"

    def check_beside(folder: Path) -> None:
        assert tree(saved) == old  # the finished outputs are still on disk
        assert not (folder / "out.txt").exists()  # while the new run starts in a fresh folder

    pipe.hooks["pretrain"] = check_beside
    pipe.run("pretrain.lr=0.01")
    assert pipe.calls == ["pretrain", "finetune", "predict", "evaluate"]
    assert not saved.parent.exists()  # removed once the replacement was done
    assert pipe.manifest("pretrain").status == mf.STATUS_DONE


def test_rerun_failing_on_bad_input_puts_the_finished_stage_back(pipe: FakePipeline) -> None:
    from volseg.errors import InputError

    pipe.run()
    old = tree(pipe.run_dir / "pretrain")
    old_id = pipe.manifest("pretrain").run_id

    def bad_input(folder: Path) -> None:
        (folder / "checkpoint_last.pt").write_bytes(b"half")
        raise InputError("some input is bad")

    pipe.hooks["pretrain"] = bad_input
    with pytest.raises(InputError):
        pipe.run("pretrain.lr=0.01")
    assert tree(pipe.run_dir / "pretrain") == old
    assert pipe.manifest("pretrain").run_id == old_id
    assert not (pipe.run_dir / rundir.PREVIOUS_DIR / "pretrain").exists()
    del pipe.hooks["pretrain"]
    assert pipe.run() == {name: "skipped" for name in orch.stage_names()}


def test_interrupted_rerun_keeps_the_finished_stage_until_settings_return(
    pipe: FakePipeline,
) -> None:
    pipe.run()
    old = tree(pipe.run_dir / "pretrain")

    def interrupt(folder: Path) -> None:
        (folder / "checkpoint_last.pt").write_bytes(b"epoch 1")
        raise KeyboardInterrupt

    pipe.hooks["pretrain"] = interrupt
    with pytest.raises(KeyboardInterrupt):
        pipe.run("pretrain.lr=0.01")
    saved = pipe.run_dir / rundir.PREVIOUS_DIR / "pretrain"
    assert tree(saved) == old
    del pipe.hooks["pretrain"]
    # the old settings again: the finished outputs come back, nothing is retrained
    assert pipe.run() == {name: "skipped" for name in orch.stage_names()}
    assert tree(pipe.run_dir / "pretrain") == old
    assert not saved.parent.exists()


def test_interrupted_rerun_is_continued_with_the_new_settings(pipe: FakePipeline) -> None:
    pipe.run()

    def interrupt(folder: Path) -> None:
        (folder / "checkpoint_last.pt").write_bytes(b"epoch 1")
        raise KeyboardInterrupt

    pipe.hooks["pretrain"] = interrupt
    with pytest.raises(KeyboardInterrupt):
        pipe.run("pretrain.lr=0.01")
    del pipe.hooks["pretrain"]
    pipe.run("pretrain.lr=0.01")
    assert "checkpoint_last.pt" in pipe.seen["pretrain"]  # continued, not restarted
    assert not (pipe.run_dir / rundir.PREVIOUS_DIR / "pretrain").exists()


# ============================================================= 2. OS errors, one line


def _lungs_args(src: Path, out: Path) -> list[object]:
    return ["lungs", "-i", src, "-o", out, "--no-progress"]


def _predict_args(bundle: Path, src: Path, out: Path) -> list[object]:
    return ["predict", "-m", bundle, "-i", src, "-o", out, "--no-lungs", "--device", "cpu"]


def _evaluate_args(tmp_path: Path, out: Path) -> list[object]:
    mask = np.zeros((12, 10, 6), np.uint8)
    mask[3:6, 3:6, 2:4] = 1
    save(tmp_path / "pred" / "s1_mask.nii.gz", mask)
    save(tmp_path / "ref" / "s1_mask.nii.gz", mask)
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    return ["evaluate", "--pred", pred, "--ref", ref, "-o", out, "--bootstrap", "0"]


def test_read_only_output_folder(readonly_dir: Path, tmp_path: Path, oracle_bundle, capfd) -> None:
    src = chest(tmp_path / "in" / "scan.nii.gz")
    inputs = tree(tmp_path / "in")
    data = tmp_path / "data"
    make_mosmed(data, {"CT-0": 1, "CT-1": 2}, labeled=1)
    config = _config(tmp_path)
    cases = {
        "lungs file": _lungs_args(src, readonly_dir / "scan_lungs.nii.gz"),
        "lungs folder": _lungs_args(tmp_path / "in", readonly_dir / "lungs"),
        "predict": _predict_args(oracle_bundle, src, readonly_dir / "out"),
        "predict into it": _predict_args(oracle_bundle, src, readonly_dir),
        "evaluate": _evaluate_args(tmp_path, readonly_dir / "report"),
        "synth": ["synth", "--preset", "tiny", "-o", readonly_dir / "data"],
        "prepare": ["prepare", "-c", config, "--data", data, "--run-dir", readonly_dir / "run"],
    }
    for name, args in cases.items():
        rc, lines = cli(capfd, *args, "--no-progress")
        one_error(rc, lines, readonly_dir)
        assert _cause_of_readonly(lines[0]), (name, lines)
        assert ".tmp" not in lines[0], (name, lines)  # the destination, not a temporary name
        assert list(readonly_dir.iterdir()) == [], name
    assert tree(tmp_path / "in") == inputs


def test_output_naming_an_existing_file(tmp_path: Path, oracle_bundle, capfd) -> None:
    src = chest(tmp_path / "in" / "scan.nii.gz")
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    cases = {
        "lungs": _lungs_args(tmp_path / "in", taken),
        "predict": _predict_args(oracle_bundle, src, taken),
        "evaluate": _evaluate_args(tmp_path, taken),
        "synth": ["synth", "--preset", "tiny", "-o", taken],
    }
    for name, args in cases.items():
        rc, lines = cli(capfd, *args, "--no-progress")
        one_error(rc, lines, taken, "not a folder")
        assert taken.read_text() == "keep me", name


@pytest.mark.parametrize("command", ["lungs", "predict", "evaluate", "synth"])
def test_full_disk_names_the_file_and_leaves_nothing(
    tmp_path: Path, unet_bundle: Path, command: str
) -> None:
    src = chest(tmp_path / "in" / "scan.nii.gz")
    inputs = tree(tmp_path / "in")
    out = tmp_path / "out"
    args = {
        "lungs": _lungs_args(src, out / "scan_lungs.nii.gz"),
        "predict": _predict_args(unet_bundle, src, out),
        "evaluate": _evaluate_args(tmp_path, out),
        "synth": ["synth", "--preset", "tiny", "-o", out],
    }[command]
    rc, lines = cli_limited(*args)
    one_error(rc, lines, out, os.strerror(errno.EFBIG))
    assert ".tmp" not in lines[0]
    assert not out.exists()
    assert tree(tmp_path / "in") == inputs


def test_os_error_message_names_path_and_cause() -> None:
    from volseg.errors import os_error_message

    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", "/d/x")) == (
        "/d/x: No space left on device"
    )


# ======================================================== 3. geometry, in every reader


@pytest.mark.parametrize("fault", sorted(GEOMETRY_FAULTS))
def test_bad_geometry_refused_by_every_command(
    fault: str, tmp_path: Path, oracle_bundle: Path, capfd
) -> None:
    plant, expected = GEOMETRY_FAULTS[fault]
    root = tmp_path / "data"
    make_mosmed(root, {"CT-0": 1, "CT-1": 2}, labeled=1)
    bad = root / "studies" / "CT-1" / "study_0009.nii.gz"
    plant(bad)
    before = tree(root)
    run = tmp_path / "run"
    out = tmp_path / "out"
    commands = {
        "lungs": _lungs_args(bad, out / "x_lungs.nii.gz"),
        "predict": _predict_args(oracle_bundle, bad, out),
        "prepare": ["prepare", "-c", _config(tmp_path), "--data", root, "--run-dir", run],
    }
    for name, args in commands.items():
        rc, lines = cli(capfd, *args, "--no-progress")
        one_error(rc, lines, bad, expected)
        assert not out.exists() and not run.exists(), name
    capfd.readouterr()
    assert main(["check-data", str(root), "--no-progress"]) == 2
    report = capfd.readouterr().out.splitlines()
    assert len(report) == 1 and report[0].startswith(f"{bad}: ") and expected in report[0]
    assert tree(root) == before


def test_mask_with_bad_geometry_named_by_evaluate(tmp_path: Path, capfd) -> None:
    args = _evaluate_args(tmp_path, tmp_path / "report")
    bad = tmp_path / "pred" / "s1_mask.nii.gz"
    affine = AFFINE.copy()
    affine[:3, 1] = affine[:3, 0]
    save_with_sform(bad, np.zeros((12, 10, 6), np.uint8), affine)
    rc, lines = cli(capfd, *args, "--no-progress")
    one_error(rc, lines, bad, "singular")
    assert not (tmp_path / "report").exists()


def test_library_errors_give_their_cause_not_a_repr() -> None:
    try:
        try:
            raise ValueError("spacing must be positive")
        except ValueError as inner:
            raise RuntimeError("applying transform <monai.transforms.X object at 0x7f>") from inner
    except RuntimeError as exc:
        assert cause_text(exc) == "spacing must be positive"


# ============================================================ 4. predict checks content


@pytest.mark.parametrize("fault", sorted(CONTENT_FAULTS))
def test_predict_refuses_non_hu_content(
    fault: str, tmp_path: Path, oracle_bundle: Path, capfd
) -> None:
    plant, expected = CONTENT_FAULTS[fault]
    bad = tmp_path / "in" / "scan.nii.gz"
    plant(bad)
    before = tree(tmp_path / "in")
    out = tmp_path / "out"
    rc, lines = cli(capfd, *_predict_args(oracle_bundle, bad, out), "--no-progress")
    one_error(rc, lines, bad, expected)
    assert not out.exists()
    assert tree(tmp_path / "in") == before


@pytest.mark.parametrize("fault", ["missing_slice", "truncated_slice", "duplicate_slice"])
def test_predict_refuses_incomplete_dicom_series(
    fault: str, tmp_path: Path, oracle_bundle: Path, capfd
) -> None:
    folder = tmp_path / "series"
    files = dicom_series(folder)
    if fault == "missing_slice":
        files[3].unlink()
        needles: tuple[object, ...] = (folder, "missing", files[2].name, files[4].name)
    elif fault == "truncated_slice":
        files[3].write_bytes(files[3].read_bytes()[:-300])
        needles = (files[3], "unreadable DICOM")
    else:
        shutil.copy(files[3], folder / "copy_of_003.dcm")
        needles = ("same slice position",)
    before = tree(folder)
    out = tmp_path / "out"
    rc, lines = cli(capfd, *_predict_args(oracle_bundle, folder, out), "--no-progress")
    one_error(rc, lines, *needles)
    assert not out.exists()
    assert tree(folder) == before


def test_predict_reads_a_complete_dicom_series(tmp_path: Path, oracle_bundle: Path, capfd) -> None:
    folder = tmp_path / "series"
    dicom_series(folder)
    rc, lines = cli(capfd, *_predict_args(oracle_bundle, folder, tmp_path / "out"))
    assert rc == 0 and lines == []
    assert nib.load(tmp_path / "out" / "series_mask.nii.gz").shape == (24, 20, 8)


def test_predict_refuses_two_inputs_with_one_id(tmp_path: Path, oracle_bundle, capfd) -> None:
    a = chest(tmp_path / "a" / "scan.nii.gz")
    b = chest(tmp_path / "b" / "scan.nii.gz", seed=1)
    out = tmp_path / "out"
    rc, lines = cli(
        capfd, "predict", "-m", oracle_bundle, "-i", a, b, "-o", out, "--no-lungs", "--no-progress"
    )
    one_error(rc, lines, a, b, "same id")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--device", "cuda:7"], "--device"),
        (["--device", "nonsense"], "--device nonsense"),
        (["--lungs", "missing_lungs"], "missing_lungs"),
        (["--overlap", "1.5"], "--overlap"),
        (["--roi", "16", "16"], "--roi"),
        (["--roi", "0"], "--roi"),
        (["--sw-batch-size", "0"], "--sw-batch-size"),
        (["--min-component", "-1"], "--min-component"),
        (["--num-parts", "0"], "--num-parts"),
    ],
)
def test_predict_bad_options(tmp_path: Path, oracle_bundle, capfd, args, needle) -> None:
    src = chest(tmp_path / "in" / "scan.nii.gz")
    out = tmp_path / "out"
    argv = ["predict", "-m", oracle_bundle, "-i", src, "-o", out, *args, "--no-progress"]
    if args[0] == "--device" and args[1].startswith("cuda"):
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has 8 GPUs")
    rc, lines = cli(capfd, *argv)
    one_error(rc, lines, needle)
    assert not out.exists()


# ======================================================= 5. prepare validates first


def _truncated(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _study_nan(path: Path) -> None:
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[2, 2, 2] = np.nan
    save(path, data)


def _study_raw(path: Path) -> None:
    data = np.asarray(nib.load(path).dataobj).astype(np.int32) + 1024
    save(path, data.clip(0, 4095).astype(np.uint16))


def _mask_grid(path: Path) -> None:
    img = nib.load(path)
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    save(path, np.asarray(img.dataobj), affine)


def _mask_255(path: Path) -> None:
    save(path, (np.asarray(nib.load(path).dataobj) * 255).astype(np.uint8))


def _mask_0_2(path: Path) -> None:
    save(path, (np.asarray(nib.load(path).dataobj) * 2).astype(np.uint8))


PREPARE_FAULTS = {
    "truncated_study": ("study", _truncated, "decode"),
    "nan_study": ("study", _study_nan, "NaN"),
    "non_hu_study": ("study", _study_raw, "no negative values"),
    "mask_on_other_grid": ("mask", _mask_grid, "affine differs"),
    "mask_0_255": ("mask", _mask_255, "0 or 1"),
    "mask_0_2": ("mask", _mask_0_2, "0 or 1"),
}


@pytest.mark.parametrize("fault", sorted(PREPARE_FAULTS))
def test_prepare_validates_the_whole_dataset_before_writing(
    fault: str, tmp_path: Path, capfd
) -> None:
    root = tmp_path / "data"
    make_mosmed(root, {"CT-0": 2, "CT-1": 3}, labeled=2)
    which, plant, expected = PREPARE_FAULTS[fault]
    # the last study: every other study would be processed first if nothing checked ahead
    bad = root / "masks" / "study_0004_mask.nii.gz"
    if which == "study":
        bad = root / "studies" / "CT-1" / "study_0005.nii.gz"
    plant(bad)
    before = tree(root)
    run = tmp_path / "run"
    rc, lines = cli(
        capfd, "prepare", "-c", _config(tmp_path), "--data", root, "--run-dir", run, "--no-progress"
    )
    one_error(rc, lines, bad, expected)
    assert not run.exists()
    assert tree(root) == before


def test_prepare_failing_midway_removes_what_it_wrote(tmp_path: Path, capfd) -> None:
    """A scan that passes every check but has no lungs: found only while computing masks."""
    root = tmp_path / "data"
    make_mosmed(root, {"CT-0": 2, "CT-1": 3}, labeled=2)
    bad = root / "studies" / "CT-1" / "study_0005.nii.gz"
    data = np.full((48, 40, 10), -1000, np.int16)
    data[8:40, 8:32] = 40  # a body without lungs, in HU
    save(bad, data)
    before = tree(root)
    run = tmp_path / "run"
    rc, lines = cli(
        capfd, "prepare", "-c", _config(tmp_path), "--data", root, "--run-dir", run, "--no-progress"
    )
    one_error(rc, lines, bad, "no lungs")
    assert not run.exists()  # the four lung masks computed before it are gone too
    assert tree(root) == before


# ====================================================== 6. late failures come first


def test_missing_reference_folder_fails_before_any_stage(
    pipe: FakePipeline, tmp_path: Path, capfd
) -> None:
    shutil.rmtree(pipe.data / "masks")
    rc, lines = _run_cli(capfd, pipe, tmp_path)
    one_error(rc, lines, pipe.data / "masks", "data.reference")
    assert pipe.calls == []
    assert not pipe.run_dir.exists()


# ============================================================ 7. one line, always


def test_random_bytes_model_is_one_line(tmp_path: Path, capfd) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(np.random.default_rng(0).bytes(3000))
    src = chest(tmp_path / "in" / "scan.nii.gz")
    rc, lines = cli(capfd, *_predict_args(model, src, tmp_path / "out"), "--no-progress")
    one_error(rc, lines, model, "not a readable volseg model bundle")
    assert not (tmp_path / "out").exists()


def test_junk_folder_is_one_line_without_itk_warnings(tmp_path: Path, oracle_bundle, capfd) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "blob.dcm").write_bytes(np.random.default_rng(1).bytes(1000))
    rc, lines = cli(capfd, *_predict_args(oracle_bundle, junk, tmp_path / "out"), "--no-progress")
    one_error(rc, lines, junk, "no NIfTI files and no DICOM series")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["run", "-c", "x.yaml", "--only", "finetun"], ("--only", "did you mean 'finetune'")),
        (["run", "-c", "x.yaml", "--from", "pretrian"], ("--from", "did you mean 'pretrain'")),
        (["synth", "--preset", "tiyn", "-o", "x"], ("--preset", "did you mean 'tiny'")),
        (["synth", "--seed", "abc", "-o", "x"], ("--seed", "abc")),
        (["predict", "-m", "x"], ("-i/--input",)),
        (["evalute"], ("did you mean 'evaluate'",)),
    ],
)
def test_argument_errors_are_one_line(argv, needles, capfd) -> None:
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capfd.readouterr().err
    assert exit_info.value.code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "usage:" not in err
    for needle in needles:
        assert needle in lines[0]


def test_check_data_on_a_missing_folder_is_an_error_line(tmp_path: Path, capfd) -> None:
    rc, lines = cli(capfd, "check-data", tmp_path / "nope", "--no-progress")
    one_error(rc, lines, tmp_path / "nope", "not found")


def test_help_shows_every_command_line_without_a_dict() -> None:
    text = build_parser().format_help()
    predict = next(line for line in text.splitlines() if line.strip().startswith("predict"))
    assert "involvement %" in predict
    assert "{" not in text and "'_module'" not in text


@pytest.mark.parametrize(
    ("content", "extra", "needles"),
    [
        (b"\xa6\x01\xff binary", [], ("config.yaml", "not a text")),
        (None, [], ("config.yaml", "a folder")),
        (b"seed: 0\n", ["--set", "seed=-1"], ("'seed'",)),
        (b"seed: 0\n", ["--set", "model.patch_size=[0,32,16]"], ("model.patch_size",)),
        (
            b"seed: 0\n",
            ["--set", "finetune.patch_size=[32,32,16]"],
            ("finetune.patch_size", "model.patch_size"),
        ),
        (
            b"seed: 0\n",
            ["--set", "predict.roi_size=[8,8,8]"],
            ("predict.roi_size", "model.patch_size"),
        ),
        (
            b"model: {params: {img_size: [8, 8, 8]}}\n",
            [],
            ("model.params.img_size", "model.patch_size"),
        ),
    ],
)
def test_bad_config_files_and_values(tmp_path: Path, capfd, content, extra, needles) -> None:
    config = tmp_path / "config.yaml"
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    run = tmp_path / "run"
    rc, lines = cli(capfd, "run", "-c", config, "--run-dir", run, *extra, "--no-progress")
    one_error(rc, lines, *needles)
    assert not run.exists()


def test_run_dir_that_is_a_file(tmp_path: Path, capfd) -> None:
    taken = tmp_path / "run"
    taken.write_text("keep me")
    for command in ("run", "prepare"):
        rc, lines = cli(capfd, command, "-c", _config(tmp_path), "--run-dir", taken)
        one_error(rc, lines, taken, "not a folder")
        assert taken.read_text() == "keep me"


def test_synth_negative_seed(tmp_path: Path, capfd) -> None:
    rc, lines = cli(capfd, "synth", "--preset", "tiny", "-o", tmp_path / "d", "--seed", "-1")
    one_error(rc, lines, "--seed")
    assert not (tmp_path / "d").exists()


# ====================================================== 8. a failed start writes nothing


def test_only_finetune_on_an_empty_run_dir_writes_nothing(tmp_path: Path, capfd) -> None:
    data = tmp_path / "data"
    make_mosmed(data, {"CT-0": 1, "CT-1": 2}, labeled=1)
    run = tmp_path / "run"
    rc, lines = cli(
        capfd, "run", "-c", _config(tmp_path), "--data", data, "--run-dir", run,
        "--only", "finetune", "--no-progress",
    )  # fmt: skip
    one_error(rc, lines, "finetune needs the output of prepare")
    assert not run.exists()


@pytest.mark.parametrize("stage", ["gan", "pretrain", "finetune"])
def test_training_stage_before_prepare_leaves_no_folder(stage: str, tmp_path: Path, capfd) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rc, lines = cli(capfd, stage, "-c", _config(tmp_path), "--run-dir", run, "--no-progress")
    one_error(rc, lines, "datalist.json", "prepare")
    assert list(run.iterdir()) == []


# ================================================= 9. predict on a folder, one scan bad


def test_predict_folder_with_a_failing_scan(tmp_path: Path, oracle_bundle: Path, capfd) -> None:
    folder = tmp_path / "in"
    chest(folder / "a.nii.gz")
    _nan_voxels(folder / "b.nii.gz")
    chest(folder / "c.nii.gz", seed=2)
    before = tree(folder)
    out = tmp_path / "out"
    rc, lines = cli(capfd, *_predict_args(oracle_bundle, folder, out), "--no-progress")
    one_error(rc, lines, folder / "b.nii.gz", "NaN", "1 of 3 scans failed", "summary.csv")
    # the finished scans are complete; the failed one left nothing
    assert sorted(p.name for p in out.iterdir()) == [
        "a.json",
        "a_mask.nii.gz",
        "c.json",
        "c_mask.nii.gz",
        "summary.csv",
    ]
    for sid in ("a", "c"):
        mask = nib.load(out / f"{sid}_mask.nii.gz")
        assert mask.shape == (48, 40, 10)
        assert np.array_equal(mask.affine, nib.load(folder / f"{sid}.nii.gz").affine)
    with open(out / "summary.csv", newline="") as fh:
        rows = {row["id"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["a"]["error"] == "" and rows["c"]["error"] == ""
    assert "NaN" in rows["b"]["error"] and rows["b"]["lesion_volume_ml"] == ""
    assert tree(folder) == before


def test_predict_folder_where_every_scan_fails_writes_nothing(
    tmp_path: Path, oracle_bundle: Path, capfd
) -> None:
    folder = tmp_path / "in"
    _nan_voxels(folder / "a.nii.gz")
    _all_zero(folder / "b.nii.gz")
    out = tmp_path / "out"
    rc, lines = cli(capfd, *_predict_args(oracle_bundle, folder, out), "--no-progress")
    one_error(rc, lines, folder / "a.nii.gz", "every one of the 2 scans failed")
    assert not out.exists()
