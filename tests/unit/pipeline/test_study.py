"""`volseg study`: arms, shared stages run once, resumability, tables, CSV and plot.

The orchestrator's stage table is replaced by fakes that check what they can see through
the links, record their calls and write plausible outputs (an evaluate ``summary.json``
whose Dice is a known function of the arm, N and network), so no training happens.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from volseg.config import Config, load_config
from volseg.errors import ConfigError, InputError
from volseg.pipeline import manifest as mf
from volseg.pipeline import plan as plan_mod
from volseg.pipeline import run as orch
from volseg.pipeline import study as st
from volseg.pipeline import study_painted

N_AVAILABLE = 4


def expected_dice(cfg: Config) -> float:
    """The fake evaluate's Dice: each aid, each label, the other network add known amounts."""
    n = N_AVAILABLE if cfg.finetune.n_labeled is None else min(cfg.finetune.n_labeled, 4)
    dice = 0.40 + 0.02 * n
    dice += 0.05 if cfg.finetune.init == "pretrained" else 0.0
    dice += 0.10 if cfg.finetune.use_pseudo else 0.0
    dice += 0.03 if cfg.model.name == "unet3d" else 0.0
    dice += 0.01 if cfg.model.recalibration == "se" else 0.0
    dice += 0.01 * cfg.seed
    return round(dice, 6)


CASES = ("study_0101", "study_0102", "study_0103")


def case_dice(cfg: Config, case: str) -> float:
    """The fake per-case Dice: the cell's Dice and a case offset (pretraining helps case
    0103 by 0.05 more than the others, so the paired differences differ per case)."""
    offset = {"study_0101": -0.1, "study_0102": 0.0, "study_0103": 0.1}[case]
    if case == "study_0103" and cfg.finetune.init == "pretrained":
        offset += 0.05
    return expected_dice(cfg) + offset


class FakeStudy:
    """Fake stages; ``calls`` lists ``(stage, run_dir relative to the study)``."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data = tmp_path / "data"
        (self.data / "studies" / "CT-1").mkdir(parents=True)
        (self.data / "studies" / "CT-1" / "study_0001.nii.gz").write_bytes(b"x")
        self.study_dir = tmp_path / "study"
        self.calls: list[tuple[str, str]] = []
        self.configs: dict[str, Config] = {}
        self.fail: Callable[[Config], None] | None = None
        # fake stages need no checks (the real ones: tests/unit/test_bad_inputs.py)
        fakes = tuple(
            dataclasses.replace(s, target=self._fake(s.name), check=None) for s in plan_mod.STAGES
        )
        monkeypatch.setattr(plan_mod, "STAGES", fakes)

    def rel(self, cfg: Config) -> str:
        return Path(cfg.run_dir).relative_to(self.study_dir).as_posix()

    def _fake(self, name: str) -> Callable[[Config], Path]:
        def stage(cfg: Config) -> Path:
            run_dir = Path(cfg.run_dir)
            folder = run_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            self.calls.append((name, self.rel(cfg)))
            getattr(self, f"_{name}")(cfg, run_dir, folder)
            return folder

        return stage

    def _prepare(self, cfg: Config, run_dir: Path, folder: Path) -> None:
        (folder / "datalist.json").write_text("{}")
        (run_dir / "cache" / "abc").mkdir(parents=True, exist_ok=True)
        (run_dir / "cache" / "abc" / "study_0001.npy").write_bytes(b"v")

    def _gan(self, cfg: Config, run_dir: Path, folder: Path) -> None:
        assert (run_dir / "prepare" / "datalist.json").is_file()
        (folder / "qc.csv").write_text("study_id,passed\nstudy_0001,true\n")

    def _pretrain(self, cfg: Config, run_dir: Path, folder: Path) -> None:
        assert (run_dir / "prepare" / "datalist.json").is_file()
        (folder / "encoder.pt").write_text(cfg.model.name)

    def _finetune(self, cfg: Config, run_dir: Path, folder: Path) -> None:
        self.configs[self.rel(cfg)] = cfg
        if self.fail is not None:
            self.fail(cfg)
        assert (run_dir / "prepare" / "datalist.json").is_file()
        assert (run_dir / "gan" / "qc.csv").is_file() == cfg.finetune.use_pseudo
        encoder = run_dir / "pretrain" / "encoder.pt"
        assert encoder.is_file() == (cfg.finetune.init == "pretrained")
        if encoder.is_file():
            assert encoder.read_text() == cfg.model.name  # this network's pretraining
        n = cfg.finetune.n_labeled
        ids = [f"study_{i:04d}" for i in range(N_AVAILABLE if n is None else min(n, 4))]
        (folder / "labeled.json").write_text(json.dumps({"ids": ids, "n_available": 4}))
        (folder / "model.pt").write_text("model")

    def _predict(self, cfg: Config, run_dir: Path, folder: Path) -> None:
        (folder / "study_0001_mask.nii.gz").write_text("mask")

    def _evaluate(self, cfg: Config, run_dir: Path, folder: Path) -> None:
        dice = expected_dice(cfg)
        summary = {
            "counts": {"pairs": 3},
            "metrics": {
                "dice": {"mean": dice, "sd": 0.05, "ci95": [dice - 0.02, dice + 0.02]},
                "sensitivity": {"mean": dice + 0.1, "sd": 0.1, "ci95": None},
                "abs_involvement_error_pct": {"mean": 2.5, "sd": 1.0, "ci95": None},
            },
        }
        (folder / "summary.json").write_text(json.dumps(summary))
        rows = [f"{case},{case_dice(cfg, case):.6f}" for case in CASES]
        (folder / "per_case.csv").write_text("case_id,dice\n" + "\n".join(rows) + "\n")

    def config(self, *overrides: str) -> Config:
        return load_config(
            None,
            ["evaluate.bootstrap=0", *overrides],
            data_root=self.data,
            run_dir=self.study_dir,
        )

    def run(self, labels: str = "0,2,all", *overrides: str, **kwargs) -> Path:
        self.calls.clear()
        return st.run_study(self.config(*overrides), labels, **kwargs)

    def stage_calls(self, stage: str) -> list[str]:
        return [where for name, where in self.calls if name == stage]

    def rows(self) -> list[dict[str, str]]:
        with open(self.study_dir / "study.csv", newline="") as fh:
            return list(csv.DictReader(fh))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeStudy:
    return FakeStudy(tmp_path, monkeypatch)


TWO_NETS = {"backbones": ["transunet3d", "unet3d"]}
CELLS_PER_NET = ["pseudo-n0", "full-n0"] + [
    f"{arm}-n{n}" for n in ("2", "all") for arm in ("scratch", "pretrain", "pseudo", "full")
]


def test_shared_stages_run_once_and_each_cell_once(fake: FakeStudy) -> None:
    assert fake.run(**TWO_NETS) == fake.study_dir
    assert fake.stage_calls("prepare") == ["shared"]
    assert fake.stage_calls("gan") == ["shared"]
    assert fake.stage_calls("pretrain") == ["transunet3d-none/base", "unet3d-none/base"]
    expected = [f"{net}-none/{cell}" for net in TWO_NETS["backbones"] for cell in CELLS_PER_NET]
    for stage in st.ARM_STAGES:
        assert sorted(fake.stage_calls(stage)) == sorted(expected)
    # order within a cell: finetune, predict, evaluate
    cell = [n for n, where in fake.calls if where == "unet3d-none/full-n2"]
    assert cell == ["finetune", "predict", "evaluate"]
    # 0 labels without pseudo-masks: nothing to train on, no folder made
    assert not (fake.study_dir / "transunet3d-none" / "scratch-n0").exists()
    assert not (fake.study_dir / "transunet3d-none" / "pretrain-n0").exists()


def test_rerun_runs_nothing_and_keeps_results(fake: FakeStudy) -> None:
    fake.run(**TWO_NETS)
    before = (fake.study_dir / "study.csv").read_text()
    fake.run(**TWO_NETS)
    assert fake.calls == []
    assert (fake.study_dir / "study.csv").read_text() == before


def test_finetune_setting_reruns_cells_not_shared_stages(fake: FakeStudy) -> None:
    fake.run("2")
    fake.run("2", "finetune.lr=0.01")
    assert {n for n, _ in fake.calls} == set(st.ARM_STAGES)
    assert len(fake.stage_calls("finetune")) == 4


def test_arms_get_their_config(fake: FakeStudy) -> None:
    fake.run("0,2,all", "model.params.transunet3d={widths: [8, 16]}", **TWO_NETS)
    scratch = fake.configs["transunet3d-none/scratch-n2"]
    assert scratch.finetune.init == "scratch" and scratch.finetune.use_pseudo is False
    assert scratch.gan.enabled is False and scratch.pretrain.enabled is False
    assert scratch.finetune.n_labeled == 2
    pretrain = fake.configs["transunet3d-none/pretrain-nall"]
    assert pretrain.finetune.init == "pretrained" and pretrain.pretrain.enabled is True
    assert pretrain.finetune.use_pseudo is False and pretrain.gan.enabled is False
    assert pretrain.finetune.n_labeled is None
    pseudo = fake.configs["transunet3d-none/pseudo-n0"]
    assert pseudo.finetune.init == "scratch" and pseudo.pretrain.enabled is False
    assert pseudo.finetune.use_pseudo is True and pseudo.gan.enabled is True
    assert pseudo.finetune.n_labeled == 0
    full = fake.configs["unet3d-none/full-n2"]
    assert full.finetune.init == "pretrained" and full.finetune.use_pseudo is True
    assert full.model.name == "unet3d"
    # model.params are keyed by backbone: unet3d has no entry, so it builds with defaults
    assert full.model.params == {"transunet3d": {"widths": [8, 16]}}
    assert fake.configs["transunet3d-none/full-n2"].model.params == full.model.params
    assert {c.data.split.seed for c in fake.configs.values()} == {0}


def test_links_are_relative_and_only_what_the_arm_uses(fake: FakeStudy) -> None:
    fake.run("2")
    net = fake.study_dir / "transunet3d-none"
    scratch, full = net / "scratch-n2", net / "full-n2"
    assert (scratch / "prepare").is_symlink() and (scratch / "cache").is_symlink()
    assert not (scratch / "gan").exists() and not (scratch / "pretrain").exists()
    assert (full / "gan").resolve() == (fake.study_dir / "shared" / "gan").resolve()
    assert (full / "pretrain").resolve() == (net / "base" / "pretrain").resolve()
    assert not Path((full / "pretrain").readlink()).is_absolute()


def test_orchestrator_treats_linked_stages_as_done(fake: FakeStudy) -> None:
    """A plain `volseg run` in a cell folder skips everything, writing nothing shared."""
    fake.run("2")
    for arm in ("scratch", "full"):
        cfg = st.arm_config(fake.config(), fake.study_dir, st.Cell("transunet3d", "none", arm, 2))
        fake.calls.clear()
        actions = orch.run_pipeline(cfg)
        assert fake.calls == []
        assert set(actions.values()) <= {"skipped", "disabled"}
    scratch_gan = fake.study_dir / "transunet3d-none" / "scratch-n2" / "gan"
    assert not scratch_gan.is_symlink()  # disabled manifest written in the cell's own folder
    assert mf.read_manifest(fake.study_dir / "shared", "gan").status == mf.STATUS_DONE


def test_scratch_only_study_needs_no_gan_or_pretrain(fake: FakeStudy) -> None:
    fake.run("0,3", arms=["scratch"])
    assert [n for n, _ in fake.calls] == ["prepare", "finetune", "predict", "evaluate"]
    rows = fake.rows()
    assert [(r["n_labeled"], r["status"]) for r in rows] == [("0", "n/a"), ("3", "done")]


def test_table_csv_and_plot_have_the_right_numbers(fake: FakeStudy) -> None:
    fake.run("0,2,all", recalibrations=["none", "se"])
    rows = {(r["recalibration"], r["arm"], r["n_labeled"]): r for r in fake.rows()}
    assert len(rows) == 2 * 4 * 3
    assert rows[("none", "scratch", "0")]["status"] == "n/a"
    assert rows[("none", "scratch", "0")]["dice_mean"] == ""
    full2 = rows[("se", "full", "2")]
    assert full2["status"] == "done"
    assert float(full2["dice_mean"]) == pytest.approx(0.40 + 0.04 + 0.05 + 0.10 + 0.01)
    assert float(full2["dice_ci95_high"]) == pytest.approx(float(full2["dice_mean"]) + 0.02)
    assert full2["n_test"] == "3" and full2["n_labeled_used"] == "2"
    assert float(rows[("none", "pseudo", "all")]["dice_mean"]) == pytest.approx(0.58)
    assert rows[("none", "pseudo", "all")]["n_labeled_used"] == "4"

    md = (fake.study_dir / "study.md").read_text()
    assert "## transunet3d, recalibration none" in md and "## transunet3d, recalibration se" in md
    assert "| arm | 0 | 2 | all |" in md
    assert "| scratch | n/a | 0.440 ± 0.050 | 0.480 ± 0.050 |" in md
    assert "| full | 0.550 ± 0.050 | 0.590 ± 0.050 | 0.630 ± 0.050 |" in md
    compare = md.split("## Networks compared (full arm, 2 labeled scans)")[1]
    assert "| transunet3d | se | 0.600 ± 0.050 | 0.580–0.620 | 0.700 | 2.5 | 3 |" in compare
    png = fake.study_dir / "study.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_cell_is_recorded_and_rerun_continues(fake: FakeStudy) -> None:
    def fail(cfg: Config) -> None:
        if cfg.finetune.n_labeled == 0 and cfg.finetune.init == "scratch":
            raise InputError("finetune: no QC-passed pseudo-masks")

    fake.fail = fail
    with pytest.raises(st.StudyIncomplete, match="1 of 6 study runs failed.*pseudo-n0"):
        fake.run("0,2")
    status = {(r["arm"], r["n_labeled"]): r["status"] for r in fake.rows()}
    assert status[("pseudo", "0")] == "failed" and status[("full", "0")] == "done"
    assert "no QC-passed pseudo-masks" in (fake.study_dir / "study.md").read_text()
    fake.fail = None
    fake.run("0,2")
    assert fake.calls == [(s, "transunet3d-none/pseudo-n0") for s in st.ARM_STAGES]
    assert {r["status"] for r in fake.rows()} == {"done", "n/a"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": "0,two"}, "'two' is not a number"),
        ({"labels": "-1"}, "negative"),
        ({"labels": "2", "arms": ["scrach"]}, "did you mean 'scratch'"),
        ({"labels": "2", "backbones": ["unet"]}, "--backbones: unknown 'unet'"),
        ({"labels": "2", "recalibrations": ["sse"]}, "--recalibration: unknown 'sse'"),
    ],
)
def test_bad_options_are_config_errors(fake: FakeStudy, kwargs: dict, message: str) -> None:
    labels = kwargs.pop("labels")
    with pytest.raises(ConfigError, match=message):
        st.run_study(fake.config(), labels, **kwargs)
    assert not fake.study_dir.exists()


def test_parse_labels_sorts_and_dedups() -> None:
    assert st.parse_labels("all, 5,0,2,5") == [0, 2, 5, None]


def test_study_dir_inside_the_dataset_is_refused(fake: FakeStudy) -> None:
    cfg = load_config(None, data_root=fake.data, run_dir=fake.data / "study")
    with pytest.raises(ConfigError, match="must be outside data.root"):
        st.run_study(cfg, "2")


def test_cli_runs_and_logs_the_table(fake: FakeStudy, tmp_path: Path, caplog) -> None:
    from volseg.cli import main

    config = tmp_path / "study.yaml"
    config.write_text("evaluate: {bootstrap: 0}\n")
    base = ["study", "-c", str(config), "--data", str(fake.data)]
    base += ["--run-dir", str(fake.study_dir), "--labels", "1,all", "--arms", "scratch,full"]
    with caplog.at_level("INFO"):
        assert main([*base, "--dry-run"]) == 0
    assert fake.calls == [] and not fake.study_dir.exists()
    assert "2 network" not in caplog.text and "4 fine-tuning runs" in caplog.text
    with caplog.at_level("INFO"):
        assert main(base) == 0
    assert "| scratch | 0.420 ± 0.050 | 0.480 ± 0.050 |" in caplog.text
    assert len(fake.stage_calls("finetune")) == 4


def test_command_arm_names_match_library() -> None:
    from volseg.commands.study import ARM_NAMES

    assert ARM_NAMES == tuple(st.ARMS)


def test_seeds_share_one_prepare_and_repeat_the_rest(fake: FakeStudy) -> None:
    fake.run("2", arms=["scratch", "full"], seeds="0,1")
    assert fake.stage_calls("prepare") == ["shared"]
    assert fake.stage_calls("gan") == ["seed-0/shared", "seed-1/shared"]
    assert fake.stage_calls("pretrain") == [
        "seed-0/transunet3d-none/base",
        "seed-1/transunet3d-none/base",
    ]
    assert sorted(fake.stage_calls("finetune")) == [
        f"seed-{k}/transunet3d-none/{arm}-n2" for k in (0, 1) for arm in ("full", "scratch")
    ]
    assert {k: c.seed for k, c in fake.configs.items()} == {
        f"seed-{k}/transunet3d-none/{arm}-n2": k for k in (0, 1) for arm in ("full", "scratch")
    }
    seed1 = fake.study_dir / "seed-1"
    assert (seed1 / "shared" / "prepare").resolve() == (fake.study_dir / "shared" / "prepare")
    assert (seed1 / "transunet3d-none" / "full-n2" / "gan").resolve() == seed1 / "shared" / "gan"
    rows = fake.rows()
    assert [(r["seed"], r["arm"]) for r in rows] == [
        ("0", "scratch"),
        ("0", "full"),
        ("1", "scratch"),
        ("1", "full"),
    ]
    md = (fake.study_dir / "study.md").read_text()
    assert "mean over 2 seeds ± sd across seeds" in md
    # scratch n=2: 0.44 with seed 0, 0.45 with seed 1
    assert "| scratch | 0.445 ± 0.007 |" in md and "| full | 0.595 ± 0.007 |" in md
    fake.run("2", arms=["scratch", "full"], seeds="0,1")
    assert fake.calls == []


def test_paired_differences_in_study_outputs(fake: FakeStudy) -> None:
    fake.run("2", arms=["scratch", "pretrain"], seeds="0,1")
    paired = list(csv.DictReader((fake.study_dir / "study_paired.csv").open()))
    assert [(r["arm"], r["stratum"]) for r in paired] == [("pretrain", "all")]
    row = paired[0]
    # pretrain adds 0.05 to every case and 0.05 more to study_0103: (0.05 + 0.05 + 0.10) / 3
    assert float(row["diff_mean"]) == pytest.approx(0.2 / 3)
    assert row["n_scans"] == "3" and row["n_seeds"] == "2"
    assert row["diff_per_seed"] == "+0.067/+0.067"
    assert float(row["diff_ci95_low"]) >= 0.05 - 1e-9 and float(row["diff_ci95_high"]) <= 0.1
    assert row["ci_excludes_zero"] == "True"
    md = (fake.study_dir / "study.md").read_text()
    assert "## Paired per-scan differences to scratch" in md
    png = fake.study_dir / "study_paired.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_painted_set_is_scored_per_cell(fake: FakeStudy, tmp_path: Path, monkeypatch) -> None:
    painted = tmp_path / "painted"
    for name in ("studies/CT-1", "truth", "lungs"):
        (painted / name).mkdir(parents=True)
    (painted / "studies" / "CT-1" / "p_ct1.nii.gz").write_bytes(b"x")
    (painted / "manifest.csv").write_text("study_id\np_ct1\n")
    scored: list[str] = []

    def fake_score(cfg: Config, where: Path) -> Path:
        assert where == painted.resolve()
        scored.append(fake.rel(cfg))
        folder = Path(cfg.run_dir) / "painted" / "evaluate"
        folder.mkdir(parents=True, exist_ok=True)
        dice = expected_dice(cfg) - 0.2
        summary = {"counts": {"pairs": 2}, "metrics": {"dice": {"mean": dice, "ci95": None}}}
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "per_case.csv").write_text(f"case_id,dice\np_ct1,{dice}\np_ct2,{dice}\n")
        record = study_painted._record(cfg, where)  # scored with the cell's current model
        (folder.parent / study_painted.RECORD).write_text(json.dumps(record))
        return folder

    monkeypatch.setattr(st, "score_painted", fake_score)
    fake.run("2", arms=["scratch", "full"], painted=painted)
    assert scored == ["transunet3d-none/scratch-n2", "transunet3d-none/full-n2"]
    rows = {r["arm"]: r for r in fake.rows()}
    assert float(rows["full"]["painted_dice_mean"]) == pytest.approx(0.59 - 0.2)
    assert rows["full"]["painted_n"] == "2"
    md = (fake.study_dir / "study.md").read_text()
    assert "Painted real anatomy (`--painted`, 2 studies): mean Dice" in md
    assert "| full | 0.390 |" in md
    paired = list(csv.DictReader((fake.study_dir / "study_paired.csv").open()))
    strata = {r["stratum"]: float(r["diff_mean"]) for r in paired}
    assert strata["painted"] == pytest.approx(0.15) and strata["all"] == pytest.approx(
        0.15 + 0.05 / 3
    )


def test_painted_set_without_its_layout_is_refused(fake: FakeStudy, tmp_path: Path) -> None:
    (tmp_path / "p" / "studies").mkdir(parents=True)
    with pytest.raises(InputError, match="truth: not found; --painted takes"):
        fake.run("2", arms=["scratch"], painted=tmp_path / "p")
    assert fake.calls == []


def test_bad_seeds_are_config_errors(fake: FakeStudy) -> None:
    with pytest.raises(ConfigError, match="--seeds: 'x' is not a seed"):
        fake.run("2", seeds="0,x")
    assert st.parse_seeds("2, 0,2") == [2, 0]
