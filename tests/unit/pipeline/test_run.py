"""The `volseg run` orchestrator: order, skip/re-run rules, manifests, --from/--only/--force.

The stage table is replaced by fake stage functions that record their calls and write a
file, so these tests exercise only the bookkeeping (no training).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from volseg.config import load_config
from volseg.errors import ConfigError, InputError
from volseg.pipeline import manifest as mf
from volseg.pipeline import plan as plan_mod
from volseg.pipeline import run as orch

ALL = ["prepare", "gan", "pretrain", "finetune", "predict", "evaluate"]


class FakePipeline:
    """Fake stages in a temporary run directory; ``calls`` lists the stages run, in order."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data = tmp_path / "data"
        (self.data / "studies" / "CT-0").mkdir(parents=True)
        (self.data / "studies" / "CT-0" / "study_0001.nii.gz").write_bytes(b"x")
        self.run_dir = tmp_path / "run"
        self.calls: list[str] = []
        self.hooks: dict[str, Callable[[Path], None]] = {}
        self.seen: dict[str, list[str]] = {}
        # fake stages need no checks (the real ones: tests/unit/test_bad_inputs.py)
        fakes = tuple(
            dataclasses.replace(s, target=self._fake(s.name), check=None) for s in plan_mod.STAGES
        )
        monkeypatch.setattr(plan_mod, "STAGES", fakes)

    def _fake(self, name: str) -> Callable:
        def stage(cfg) -> Path:
            folder = Path(cfg.run_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            self.seen[name] = sorted(p.name for p in folder.iterdir())
            self.calls.append(name)
            if name in self.hooks:
                self.hooks[name](folder)
            (folder / "out.txt").write_text(f"call {len(self.calls)}\n")
            return folder

        return stage

    def config(self, *overrides: str):
        return load_config(None, list(overrides), data_root=self.data, run_dir=self.run_dir)

    def run(self, *overrides: str, **kwargs) -> dict[str, str]:
        self.calls.clear()
        return orch.run_pipeline(self.config(*overrides), **kwargs)

    def manifest(self, name: str) -> mf.Manifest:
        record = mf.read_manifest(self.run_dir, name)
        assert record is not None
        return record


@pytest.fixture
def pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePipeline:
    return FakePipeline(tmp_path, monkeypatch)


def ran(actions: dict[str, str]) -> list[str]:
    return [name for name, action in actions.items() if action == "ran"]


def test_runs_every_stage_in_order_and_records_manifests(pipe: FakePipeline) -> None:
    actions = pipe.run()
    assert pipe.calls == ALL
    assert actions == {name: "ran" for name in ALL}
    assert (pipe.run_dir / "config.yaml").is_file()
    for name in ALL:
        record = pipe.manifest(name)
        assert record.status == mf.STATUS_DONE
        assert record.output == str(pipe.run_dir / name)
        assert record.run_id and record.duration_s is not None and record.finished
        assert set(record.versions) == {"volseg", "torch", "monai", "python"}
    prepare = pipe.manifest("prepare")
    assert prepare.inputs["dataset"]["files"] == 1
    assert set(prepare.config_sections) == {"data"}
    finetune = pipe.manifest("finetune")
    assert set(finetune.inputs) == {"prepare", "gan", "pretrain"}
    assert finetune.inputs["gan"]["run_id"] == pipe.manifest("gan").run_id


def test_second_run_skips_everything(pipe: FakePipeline) -> None:
    pipe.run()
    actions = pipe.run()
    assert pipe.calls == []
    assert actions == {name: "skipped" for name in ALL}


def test_finetune_setting_reruns_finetune_and_later_only(pipe: FakePipeline) -> None:
    pipe.run()
    actions = pipe.run("finetune.lr=0.01")
    assert pipe.calls == ["finetune", "predict", "evaluate"]
    assert [k for k, v in actions.items() if v == "skipped"] == ["prepare", "gan", "pretrain"]
    assert pipe.run("finetune.lr=0.01") == {name: "skipped" for name in ALL}


def test_evaluate_setting_reruns_evaluate_only(pipe: FakePipeline) -> None:
    pipe.run()
    pipe.run("evaluate.bootstrap=10")
    assert pipe.calls == ["evaluate"]


def test_data_setting_reruns_everything_but_keeps_prepare_folder(pipe: FakePipeline) -> None:
    pipe.run()
    lungs = pipe.run_dir / "prepare" / "lungs" / "study_0001_lungs.nii.gz"
    lungs.parent.mkdir()
    lungs.write_bytes(b"lungs")
    pipe.run("data.split.seed=3")
    assert pipe.calls == ALL
    assert lungs.is_file()  # prepare reuses its lung masks on a settings-only change


def test_changed_dataset_reruns_everything_from_scratch(pipe: FakePipeline) -> None:
    pipe.run()
    stale = pipe.run_dir / "prepare" / "stale.txt"
    stale.write_text("old")
    (pipe.data / "studies" / "CT-0" / "study_0002.nii.gz").write_bytes(b"y")
    pipe.run()
    assert pipe.calls == ALL
    assert not stale.exists()
    assert pipe.manifest("prepare").inputs["dataset"]["files"] == 2


def test_disabling_gan_skips_it_and_reruns_downstream(pipe: FakePipeline) -> None:
    pipe.run()
    actions = pipe.run("gan.enabled=false")
    assert actions["gan"] == "disabled"
    assert pipe.calls == ["finetune", "predict", "evaluate"]
    assert pipe.manifest("gan").status == mf.STATUS_DISABLED
    assert pipe.manifest("finetune").inputs["gan"] == {"stage": "gan", "status": "skipped-disabled"}
    assert pipe.run("gan.enabled=false")["gan"] == "disabled"
    assert pipe.calls == []
    pipe.run()  # enabled again: gan runs and so does everything reading from it
    assert pipe.calls == ["gan", "finetune", "predict", "evaluate"]


def test_disabled_from_the_start(pipe: FakePipeline) -> None:
    actions = pipe.run("gan.enabled=false", "pretrain.enabled=false")
    assert pipe.calls == ["prepare", "finetune", "predict", "evaluate"]
    assert actions["pretrain"] == "disabled"


def test_from_forces_that_stage_and_later_from_scratch(pipe: FakePipeline) -> None:
    pipe.run()
    stale = pipe.run_dir / "finetune" / "checkpoint_last.pt"
    stale.write_bytes(b"old")
    actions = pipe.run(start="finetune")
    assert pipe.calls == ["finetune", "predict", "evaluate"]
    assert ran(actions) == ["finetune", "predict", "evaluate"]
    assert "checkpoint_last.pt" not in pipe.seen["finetune"]


def test_only_considers_one_stage(pipe: FakePipeline) -> None:
    pipe.run()
    assert pipe.run(only="pretrain") == {"pretrain": "skipped"}
    assert pipe.run(only="pretrain", force=True) == {"pretrain": "ran"}
    assert pipe.calls == ["pretrain"]
    # finetune now reads a new pretrain run, so a full run catches up downstream only
    pipe.run()
    assert pipe.calls == ["finetune", "predict", "evaluate"]


def test_force_reruns_everything(pipe: FakePipeline) -> None:
    pipe.run()
    assert ran(pipe.run(force=True)) == ALL
    assert pipe.calls == ALL


def test_failed_stage_is_recorded_and_continued_next_time(pipe: FakePipeline) -> None:
    def crash(folder: Path) -> None:
        (folder / "checkpoint_last.pt").write_bytes(b"half")
        raise RuntimeError("out of memory")

    pipe.hooks["finetune"] = crash
    with pytest.raises(RuntimeError, match="out of memory"):
        pipe.run()
    assert pipe.calls == ["prepare", "gan", "pretrain", "finetune"]
    record = pipe.manifest("finetune")
    assert record.status == mf.STATUS_FAILED
    assert "out of memory" in (record.error or "")
    assert mf.read_manifest(pipe.run_dir, "predict") is None

    del pipe.hooks["finetune"]
    actions = pipe.run()
    assert pipe.calls == ["finetune", "predict", "evaluate"]
    assert [k for k, v in actions.items() if v == "skipped"] == ["prepare", "gan", "pretrain"]
    assert "checkpoint_last.pt" in pipe.seen["finetune"]  # continued, not restarted
    assert pipe.manifest("finetune").status == mf.STATUS_DONE


def test_stage_left_running_is_rerun_in_place(pipe: FakePipeline) -> None:
    pipe.run()
    record = pipe.manifest("pretrain")
    record.status = mf.STATUS_RUNNING  # as if the process had been killed mid-way
    mf.write_manifest(pipe.run_dir, record)
    (pipe.run_dir / "pretrain" / "checkpoint_last.pt").write_bytes(b"epoch 3")
    pipe.run()
    assert pipe.calls == ["pretrain", "finetune", "predict", "evaluate"]
    assert "checkpoint_last.pt" in pipe.seen["pretrain"]


def test_unreadable_manifest_reruns_the_stage(pipe: FakePipeline) -> None:
    pipe.run()
    mf.manifest_path(pipe.run_dir, "evaluate").write_text("{not json")
    pipe.run()
    assert pipe.calls == ["evaluate"]


def test_replaced_upstream_outputs_rerun_downstream(pipe: FakePipeline) -> None:
    pipe.run()
    # e.g. `torchrun -m volseg finetune` run again by hand: new files, old manifest
    (pipe.run_dir / "finetune" / "model.pt").write_bytes(b"new weights")
    pipe.run()
    assert pipe.calls == ["predict", "evaluate"]


def test_only_without_inputs_is_a_clear_error(pipe: FakePipeline) -> None:
    with pytest.raises(InputError, match="finetune needs the output of prepare"):
        pipe.run(only="finetune")
    assert pipe.calls == []
    assert mf.read_manifest(pipe.run_dir, "finetune") is None


def test_only_accepts_upstream_run_outside_the_orchestrator(pipe: FakePipeline) -> None:
    pipe.run()
    # finetune re-run by its own command (e.g. under torchrun): outputs, no manifest
    mf.manifest_path(pipe.run_dir, "finetune").unlink()
    assert pipe.run(only="predict") == {"predict": "ran"}
    assert pipe.manifest("predict").inputs["finetune"]["status"] == plan_mod.EXTERNAL


def test_bad_selection_and_disabled_finetune(pipe: FakePipeline) -> None:
    with pytest.raises(ConfigError, match="either --from or --only"):
        pipe.run(start="gan", only="gan")
    with pytest.raises(ConfigError, match="unknown stage 'gann'"):
        pipe.run(only="gann")
    with pytest.raises(ConfigError, match="finetune.enabled is false"):
        pipe.run("finetune.enabled=false")
    missing = load_config(None, data_root=pipe.data / "missing", run_dir=pipe.run_dir)
    with pytest.raises(InputError, match="dataset folder not found"):
        orch.run_pipeline(missing)


def test_refuses_to_run_under_torchrun(pipe: FakePipeline, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun"):
        pipe.run()


def test_command_stage_names_match_table() -> None:
    from volseg.commands.run import STAGE_NAMES

    assert STAGE_NAMES == orch.stage_names() == tuple(ALL)


def test_cli_bad_config_key_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from volseg.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: {lrr: 0.1}\n")
    rc = main(["run", "--config", str(bad), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "finetune.lrr" in err and "did you mean 'lr'" in err
    assert not (tmp_path / "run").exists()


def test_cli_only_without_inputs_exit_2(tmp_path: Path, capsys) -> None:
    from volseg.cli import main

    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    rc = main(
        [
            "run",
            "-c",
            str(config),
            "--data",
            str(data),
            "--run-dir",
            str(tmp_path / "r"),
            "--only",
            "predict",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "predict needs the output of prepare" in err


# ----------------------------------------------------------------------------- adapters


def _tiny_run(tmp_path: Path):
    """A datalist with two test studies (one with a reference) and their files."""
    from volseg.data.mosmed import Datalist, Study
    from volseg.io import write_nifti

    root, run_dir = tmp_path / "data", tmp_path / "run"
    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    studies = {}
    for sid, category in (("study_0001", "CT-1"), ("study_0002", "CT-1"), ("study_0003", "CT-0")):
        image = root / "studies" / category / f"{sid}.nii.gz"
        write_nifti(image, np.full((6, 6, 4), -800, np.int16), affine)
        lungs = write_nifti(
            run_dir / "prepare" / "lungs" / f"{sid}_lungs.nii.gz",
            np.ones((6, 6, 4), np.uint8),
            affine,
        )
        studies[sid] = Study(id=sid, category=category, image=image, lungs=lungs)
    mask = np.zeros((6, 6, 4), np.uint8)
    mask[1:4, 1:4, 1:3] = 1
    write_nifti(root / "masks" / "study_0001_mask.nii.gz", mask, affine)
    write_nifti(root / "masks" / "study_0003_mask.nii.gz", mask, affine)  # train: not evaluated
    splits = {"train": ["study_0003"], "val": [], "test": ["study_0001", "study_0002"]}
    Datalist(root=root, studies=studies, splits=splits).save(run_dir / "prepare" / "datalist.json")
    cfg = load_config(None, ["evaluate.bootstrap=0"], data_root=root, run_dir=run_dir)
    return cfg, mask, affine


def test_predict_adapter_predicts_the_test_split(tmp_path: Path, monkeypatch) -> None:
    import volseg.stages.predict as predict_mod

    cfg, _, _ = _tiny_run(tmp_path)
    bundle = cfg.run_dir / "finetune" / "model.pt"
    with pytest.raises(InputError, match="fine-tuned model not found"):
        predict_mod.run_predict_split(cfg)
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(b"model")
    got = {}
    monkeypatch.setattr(predict_mod, "run_predict", lambda *a, **k: got.update(args=a, kw=k))
    assert predict_mod.run_predict_split(cfg) == cfg.run_dir / "predict"
    model, inputs, out_dir = got["args"]
    assert model == bundle and out_dir == cfg.run_dir / "predict"
    assert [p.name for p in inputs] == ["study_0001.nii.gz", "study_0002.nii.gz"]
    assert got["kw"]["lungs"] == cfg.run_dir / "prepare" / "lungs"
    assert "roi_size" not in got["kw"]  # the ROI is the bundle recipe's patch size
    assert got["kw"]["overlap"] == cfg.predict.overlap
    assert got["kw"]["use_lungs"] is cfg.predict.restrict_to_lungs


def test_evaluate_adapter_scores_test_studies_with_a_reference(tmp_path: Path, caplog) -> None:
    from volseg.io import write_nifti
    from volseg.stages import evaluate as evaluate_mod

    cfg, mask, affine = _tiny_run(tmp_path)
    for sid in ("study_0001", "study_0002"):
        write_nifti(cfg.run_dir / "predict" / f"{sid}_mask.nii.gz", mask, affine)
    out = evaluate_mod.run_evaluate_split(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["pairs"] == 1  # study_0002 has no reference, study_0003 is train
    assert summary["counts"]["ref_without_pred"] == 0
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(1.0)
    with caplog.at_level("INFO", logger="volseg.pipeline.run"):
        figures = orch.log_results(cfg.run_dir)
    assert figures is not None and figures["dice"] == pytest.approx(1.0)
    assert figures["report"].endswith("report.md") and Path(figures["report"]).is_file()
    assert "Dice 1.000" in caplog.text


# ----------------------------------------------------------------------------- pipelines/

PIPELINES = Path(__file__).resolve().parents[3] / "pipelines"


def _run_script(tmp_path: Path, script: str, *args: str, nproc: int = 1) -> list[str]:
    """Run a pipelines/ script with ``volseg`` and ``torchrun`` stubs that log their argv."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log_file = tmp_path / "calls.log"
    for tool in ("volseg", "torchrun"):
        stub = bin_dir / tool
        stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "{log_file}"\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NPROC": str(nproc)}
    env.pop("TORCHRUN_ARGS", None)
    subprocess.run(["bash", str(PIPELINES / script), *args], env=env, check=True, cwd=tmp_path)
    return log_file.read_text().splitlines()


def test_stage_scripts_call_the_cli(tmp_path: Path) -> None:
    assert _run_script(tmp_path, "05_predict.sh") == [
        "volseg run --config configs/demo.yaml --only predict"
    ]
    calls = _run_script(tmp_path, "04_finetune.sh", "c.yaml", "--set", "finetune.lr=0.1")
    assert calls[-1] == "volseg run --config c.yaml --only finetune --set finetune.lr=0.1"


def test_training_scripts_use_torchrun_when_nproc_above_one(tmp_path: Path) -> None:
    assert _run_script(tmp_path, "03_pretrain.sh", "c.yaml", nproc=4) == [
        "torchrun --standalone --nproc_per_node 4 -m volseg pretrain --config c.yaml"
    ]
    assert _run_script(tmp_path, "06_evaluate.sh", "c.yaml", nproc=4)[-1] == (
        "volseg run --config c.yaml --only evaluate"
    )


def test_run_all_calls_every_stage_in_order(tmp_path: Path) -> None:
    calls = _run_script(tmp_path, "run_all.sh", "c.yaml")
    assert [c.split("--only ")[1] for c in calls] == ALL


def test_linked_stage_reruns_in_own_folder_and_leaves_the_shared_one(
    pipe: FakePipeline, tmp_path: Path
) -> None:
    """A study cell links shared stages; re-running one there must not touch the original."""
    pipe.run()
    shared = tmp_path / "shared"
    (pipe.run_dir / "gan").rename(shared)
    (pipe.run_dir / "gan").symlink_to(shared)
    before = {p.name: p.read_bytes() for p in shared.iterdir()}

    pipe.run("gan.lr=0.5")

    gan = pipe.run_dir / "gan"
    assert pipe.calls == ["gan", "finetune", "predict", "evaluate"]
    assert gan.is_dir() and not gan.is_symlink()
    assert pipe.seen["gan"] == ["manifest.json"]  # a fresh folder: no earlier outputs
    assert {p.name: p.read_bytes() for p in shared.iterdir()} == before


def test_disabling_a_linked_stage_leaves_the_shared_one(pipe: FakePipeline, tmp_path: Path) -> None:
    pipe.run()
    shared = tmp_path / "shared"
    (pipe.run_dir / "pretrain").rename(shared)
    (pipe.run_dir / "pretrain").symlink_to(shared)
    before = {p.name: p.read_bytes() for p in shared.iterdir()}

    pipe.run("pretrain.enabled=false")

    assert not (pipe.run_dir / "pretrain").is_symlink()
    assert pipe.manifest("pretrain").status == mf.STATUS_DISABLED
    assert {p.name: p.read_bytes() for p in shared.iterdir()} == before
