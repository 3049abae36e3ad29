"""`volseg finetune` end to end on the tiny synthetic dataset with a tiny TransUNet (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from volseg.bundle import load_bundle
from volseg.cli import main
from volseg.config import Config, load_config
from volseg.data import layout, sampling
from volseg.data.mosmed import Datalist, Study
from volseg.data.sampling import select_labeled
from volseg.errors import ConfigError, InputError
from volseg.inference import validation
from volseg.io import read_nifti, write_nifti
from volseg.models import build_model
from volseg.models.finetune_net import load_pretrained_encoder
from volseg.pseudo.qc import QcRow, write_qc
from volseg.recipe import Recipe
from volseg.rundir import datalist_path, encoder_path, pseudo_dir, qc_path
from volseg.stages import finetune_painted, finetune_sources
from volseg.stages.common import model_kwargs
from volseg.stages.finetune import run_finetune

TINY_MODEL = (
    "model:\n"
    "  name: transunet3d\n"
    "  patch_size: [32, 32, 16]\n"
    "  params:\n"
    "    transunet3d:\n"
    "      widths: [8, 16, 32, 64]\n"
    "      strides: [[2, 2, 1], [2, 2, 2], [2, 2, 2]]\n"
    "      hidden_size: 64\n"
    "      depth: 2\n"
    "      num_heads: 4\n"
)
DATA = (
    "seed: 0\n"
    "data:\n"
    "  spacing: [5.5, 5.5, 12.0]\n"
    "  lungs: dataset\n"
    "  split: {seed: 0, val_fraction: 0.2, test_fraction: 0.25}\n"
)
FINETUNE = (
    "finetune:\n"
    "  epochs: 2\n"
    "  iters_per_epoch: 2\n"
    "  batch_size: 2\n"
    "  warmup_epochs: 0\n"
    "  n_labeled: 1\n"
    "predict: {overlap: 0.25}\n"
)
CONFIG = DATA + TINY_MODEL + FINETUNE


@pytest.fixture(scope="module")
def prepared_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory on which ``prepare`` has run (shared; copy it before training)."""
    root = tmp_path_factory.mktemp("ft_prepared")
    cfg = root / "cfg.yaml"
    cfg.write_text(CONFIG)
    run = root / "run"
    args = ["prepare", "--config", str(cfg), "--data", str(tiny_dataset), "--run-dir", str(run)]
    assert main(args) == 0
    return run


def _run_copy(prepared_run: Path, dest: Path) -> Path:
    """A fresh run dir sharing the prepared datalist (the cache stays where it is)."""
    shutil.copytree(prepared_run / "prepare", dest / "prepare")
    (dest / "cfg.yaml").write_text(CONFIG)
    return dest


def _config(run: Path, data: Path, *overrides: str) -> Config:
    return load_config(run / "cfg.yaml", list(overrides), data_root=data, run_dir=run)


@pytest.fixture
def spy_validation(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records the study ids of every validation call the stage makes."""
    calls: list[list[str]] = []
    real = validation.validate

    def spy(predictor, cases, *args, **kwargs):
        calls.append([c.id for c in cases])
        return real(predictor, cases, *args, **kwargs)

    monkeypatch.setattr(validation, "validate", spy)
    return calls


def _write_encoder(path: Path, name: str, params: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(name, **params)
    state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": "volseg-encoder",
            "model": {"name": name, "params": params},
            "state_dict": state,
        },
        path,
    )
    return state


# ----------------------------------------------------------------------------- unit-level


def test_select_labeled_deterministic_and_stratified(tmp_path: Path) -> None:
    studies = [Study(f"s{i:02d}", "CT-1" if i < 8 else "CT-2", tmp_path / "x") for i in range(12)]
    a = select_labeled(studies, 6, seed=3)
    assert [s.id for s in a] == [s.id for s in select_labeled(list(reversed(studies)), 6, 3)]
    assert len(a) == 6 and [s.category for s in a].count("CT-2") == 2  # 6 x 4/12
    assert [s.id for s in select_labeled(studies, 6, seed=4)] != [s.id for s in a]
    assert select_labeled(studies, None, 0) == sorted(studies, key=lambda s: s.id)
    assert select_labeled(studies, 0, 0) == []


def test_encoder_mismatch_is_an_error(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "model.params={transunet3d: {widths: [8, 16], strides: [[2, 2, 2]], hidden_size: 64, num_heads: 4}}"
        ],
    )
    params = model_kwargs(cfg)
    model = build_model(cfg.model.name, **params)
    other = dict(params, hidden_size=32)
    _write_encoder(tmp_path / "a.pt", cfg.model.name, other, seed=0)
    with pytest.raises(InputError, match="hidden_size: 32 vs 64"):
        load_pretrained_encoder(model, tmp_path / "a.pt", cfg.model.name, params)
    _write_encoder(tmp_path / "b.pt", "unet3d", {"in_channels": 1, "out_channels": 1}, seed=0)
    with pytest.raises(InputError, match="pretrained for model 'unet3d'"):
        load_pretrained_encoder(model, tmp_path / "b.pt", cfg.model.name, params)
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="c.pt"):
        load_pretrained_encoder(model, tmp_path / "c.pt", cfg.model.name, params)


# ----------------------------------------------------------------------------- stage


def test_finetune_end_to_end(
    prepared_run: Path, tiny_dataset: Path, tmp_path: Path, spy_validation: list
) -> None:
    run = _run_copy(prepared_run, tmp_path / "run")
    args = ["finetune", "--config", str(run / "cfg.yaml"), "--data", str(tiny_dataset)]
    assert main([*args, "--run-dir", str(run)]) == 0
    out = run / "finetune"
    dl = Datalist.load(datalist_path(run))

    # labeled.json: n_labeled respected, only labeled TRAIN scans
    labeled = json.loads((out / "labeled.json").read_text())
    assert len(labeled["ids"]) == 1 and labeled["n_requested"] == 1
    assert set(labeled["ids"]) <= {s.id for s in dl.labeled("train")}

    # validation: every epoch, only labeled VAL scans, never a train or test id
    val_ids = {s.id for s in dl.labeled("val")}
    assert val_ids and len(spy_validation) == 2
    for ids in spy_validation:
        assert set(ids) == val_ids
        assert not set(ids) & (set(dl.splits["train"]) | set(dl.splits["test"]))

    summary = json.loads((out / "summary.json").read_text())
    assert summary["labeled_ids"] == labeled["ids"]
    assert summary["init"] == "scratch" and summary["n_pseudo"] == 0
    assert summary["healthy_ids"] == []  # finetune.use_healthy is off by default
    assert sorted(summary["val_ids"]) == sorted(val_ids)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    val = [r for r in logged if r["type"] == "val"]
    best = max(val, key=lambda r: r["val_dice"])  # the first of equal bests is kept
    assert summary["best_val_dice"] == pytest.approx(best["val_dice"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_epoch"] in (1, 2)
    assert (out / "checkpoint_best.pt").is_file() and (out / "checkpoint_last.pt").is_file()

    # the bundle rebuilds from the run dir and holds the BEST checkpoint's weights
    bundle = load_bundle(run)
    assert bundle.model_name == "transunet3d" and bundle.model_params["hidden_size"] == 64
    assert bundle.recipe.spacing == (5.5, 5.5, 12.0) and bundle.recipe.patch_size == (32, 32, 16)
    assert bundle.recipe == Recipe.from_config(_config(run, tiny_dataset))
    best = torch.load(out / "checkpoint_best.pt", weights_only=True)["modules"]["net"]
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, best[f"seg.{key}"]), key
    with torch.no_grad():
        y = bundle.model(torch.rand(1, 1, 24, 20, 10))
    assert y.shape == (1, 1, 24, 20, 10) and torch.isfinite(y).all()

    # re-running is a no-op: no training, no validation, files untouched
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    spy_validation.clear()
    assert main([*args, "--run-dir", str(run)]) == 0
    assert spy_validation == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before


def test_pretrained_encoder_initialises_the_network(
    prepared_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    run = _run_copy(prepared_run, tmp_path / "run")
    # a learning rate so small that the weights cannot move from their start
    cfg = _config(
        run, tiny_dataset, "finetune.lr=1e-12", "finetune.epochs=1", "finetune.supcon_weight=0"
    )
    params = model_kwargs(cfg)
    known = _write_encoder(encoder_path(run), cfg.model.name, params, seed=1234)
    scratch = build_model(cfg.model.name, **params).encoder.state_dict()
    run_finetune(cfg)
    summary = json.loads((run / "finetune" / "summary.json").read_text())
    assert summary["init"] == "pretrained"
    encoder = load_bundle(run).model.encoder.state_dict()
    for key, value in known.items():
        assert torch.allclose(encoder[key], value, atol=1e-6), key
    assert any(not torch.equal(scratch[k], known[k]) for k in known)  # not the default init

    # an encoder pretrained with other params stops the stage with a clear error
    _write_encoder(encoder_path(run), cfg.model.name, dict(params, depth=1), seed=0)
    with pytest.raises(InputError, match="depth: 1 vs 2"):
        run_finetune(cfg, resume=False)


def test_healthy_sources_are_empty_masks_of_train_ct0(
    prepared_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from volseg.stages.common import load_prepared

    run = _run_copy(prepared_run, tmp_path / "run")
    cfg = _config(run, tiny_dataset, "finetune.use_healthy=true")
    prepared = load_prepared(cfg)
    sources = finetune_sources.healthy_sources(cfg, prepared)
    dl = prepared.datalist
    assert sorted(s.id for s in sources) == sorted(s.id for s in dl.healthy("train"))
    for src in sources:
        label = src.get("label")
        assert label.shape == tuple(prepared.volumes[src.id].shape) and not label.any()
        assert src.weight == 1.0
    # only CT-0 scans of the TRAIN split: never a val/test scan, never a labeled one
    assert sources and all(dl.split_of(s.id) == "train" for s in sources)
    assert not {s.id for s in sources} & {s.id for s in dl.labeled("train")}
    assert (
        finetune_sources.healthy_sources(_config(run, tiny_dataset), prepared) == []
    )  # default off

    # a fine-tune with them records which scans were used
    run_finetune(_config(run, tiny_dataset, "finetune.use_healthy=true", "finetune.epochs=1"))
    summary = json.loads((run / "finetune" / "summary.json").read_text())
    assert sorted(summary["healthy_ids"]) == sorted(s.id for s in sources)


def test_calibrated_gate_is_chosen_on_validation_and_stored_in_the_bundle(
    prepared_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    run = _run_copy(prepared_run, tmp_path / "run")
    dl = Datalist.load(datalist_path(run))
    assert dl.labeled("val") and dl.healthy("val") and dl.healthy("train")
    bundle = run_finetune(_config(run, tiny_dataset, "finetune.calibrate_gate=true"))
    gate = json.loads((run / "finetune" / "summary.json").read_text())["gate"]
    # labeled validation scans, and the healthy scans fine-tuning did not learn from: CT-0
    # validation and (use_healthy off) CT-0 training scans; never a test scan
    healthy = dl.healthy(("val", "train"))
    expected = {s.id: False for s in dl.labeled("val")} | {s.id: True for s in healthy}
    assert {c["id"]: c["empty_reference"] for c in gate["cases"]} == expected
    trained_on_healthy = _config(run, tiny_dataset, "finetune.use_healthy=true")
    assert finetune_sources.gate_healthy_studies(trained_on_healthy, dl) == dl.healthy("val")
    cases = [validation.GateCase(**c) for c in gate["cases"]]
    assert gate["min_involvement_pct"] == validation.choose_involvement_gate(cases)
    # every unlabeled CT-1..CT-4 validation scan is checked against the gate (reported only)
    check = gate["unlabeled_diseased"]
    diseased = {s.id: s.category for s in dl.covid_unlabeled("val")}
    assert diseased and check["categories"] == diseased
    below = [i for i, pct in check["involvement_pct"].items() if pct < gate["min_involvement_pct"]]
    assert check["below_gate"] == below
    loaded = load_bundle(bundle, "cpu")
    assert loaded.predict_defaults["min_involvement_pct"] == gate["min_involvement_pct"]

    # without calibration the bundle carries no gate (0)
    other = _run_copy(prepared_run, tmp_path / "other")
    plain = load_bundle(run_finetune(_config(other, tiny_dataset, "finetune.epochs=1")), "cpu")
    assert plain.predict_defaults["min_involvement_pct"] == 0.0


def test_healthy_fraction_probabilities() -> None:
    from volseg.config import FinetuneConfig

    # sources: 2 labeled, 1 pseudo-labeled, 2 healthy
    probs = sampling.source_probabilities(2, 1, 2, FinetuneConfig(healthy_fraction=0.1))
    assert probs == pytest.approx([0.3, 0.3, 0.3, 0.05, 0.05])
    assert sampling.source_probabilities(2, 1, 2, FinetuneConfig()) is None  # uniform
    assert sampling.source_probabilities(2, 1, 0, FinetuneConfig(healthy_fraction=0.1)) is None
    with pytest.raises(InputError, match="healthy scans alone"):
        sampling.source_probabilities(0, 0, 2, FinetuneConfig(healthy_fraction=0.1))


def test_pseudo_fraction_probabilities() -> None:
    from volseg.config import FinetuneConfig

    ft = FinetuneConfig(pseudo_fraction=0.4)
    # 2 labeled, 3 pseudo-labeled: labeled scans 0.3 each, pseudo-labeled 0.4 / 3 each
    probs = sampling.source_probabilities(2, 3, 0, ft)
    assert probs == pytest.approx([0.3, 0.3, 0.4 / 3, 0.4 / 3, 0.4 / 3])
    # with healthy scans (uniform, 2 of 7 sources) the lesion scans split the other 5/7
    probs = sampling.source_probabilities(2, 3, 2, ft)
    assert probs == pytest.approx([3 / 14, 3 / 14, 2 / 21, 2 / 21, 2 / 21, 1 / 7, 1 / 7])
    both = ft.model_copy(update={"healthy_fraction": 0.1})
    probs = sampling.source_probabilities(2, 3, 2, both)
    assert probs == pytest.approx([0.27, 0.27, 0.12, 0.12, 0.12, 0.05, 0.05])
    # nothing to split: no labeled scans, no pseudo-masks, or the true-mask phase
    assert sampling.source_probabilities(0, 3, 0, ft) is None
    assert sampling.source_probabilities(2, 0, 0, ft) is None
    assert sampling.source_probabilities(2, 3, 0, ft, pseudo=False) == pytest.approx(
        [0.5, 0.5, 0, 0, 0]
    )


def test_painted_fraction_probabilities() -> None:
    from volseg.config import FinetuneConfig

    ft = FinetuneConfig(use_healthy=True, healthy_fraction=0.1, painted_fraction=0.3)
    # 2 labeled, 1 pseudo, 2 healthy, 3 painted: painted 0.3 / 3, healthy 0.1 / 2, the
    # lesion scans the other 0.6 evenly
    probs = sampling.source_probabilities(2, 1, 2, ft, n_painted=3)
    assert probs == pytest.approx([0.2, 0.2, 0.2, 0.05, 0.05, 0.1, 0.1, 0.1])
    # healthy drawn like the lesion scans: the 5 of them share the 0.7 the painted leave
    uniform = FinetuneConfig(painted_fraction=0.3)
    probs = sampling.source_probabilities(2, 1, 2, uniform, n_painted=3)
    assert probs == pytest.approx([0.14] * 5 + [0.1] * 3)
    # with pseudo_fraction: lesion share 0.7, labeled 0.7 * 0.6 / 2, pseudo 0.7 * 0.4 / 3
    every = FinetuneConfig(pseudo_fraction=0.4, healthy_fraction=0.1, painted_fraction=0.2)
    probs = sampling.source_probabilities(2, 3, 2, every, n_painted=4)
    assert probs == pytest.approx([0.21, 0.21] + [0.28 / 3] * 3 + [0.05] * 2 + [0.05] * 4)
    # true-mask phase: the painted keep 0.3, the labeled take the pseudo-labeled's share
    phase = FinetuneConfig(pseudo_fraction=0.4, painted_fraction=0.3)
    probs = sampling.source_probabilities(2, 3, 0, phase, pseudo=False, n_painted=2)
    assert probs == pytest.approx([0.35, 0.35, 0, 0, 0, 0.15, 0.15])
    switch = phase.model_copy(update={"pseudo_until": 0.5})
    [(_, phased)] = sampling.source_phases(2, 3, 0, switch, samples_per_step=1, n_painted=2)
    assert phased == probs
    # nothing painted (no CT-0 training scan): the shares without the key, exactly
    assert sampling.source_probabilities(2, 1, 2, ft) == sampling.source_probabilities(
        2, 1, 2, ft.model_copy(update={"painted_fraction": None})
    )
    assert sampling.source_probabilities(2, 1, 0, uniform) is None
    with pytest.raises(ValueError, match="without finetune.painted_fraction"):
        sampling.source_probabilities(2, 1, 0, FinetuneConfig(), n_painted=3)
    with pytest.raises(InputError, match="painted scans need"):
        sampling.source_probabilities(0, 0, 0, uniform, n_painted=3)
    assert sampling.crop_shares((2, 1, 2, 3), probs=[0.2] * 3 + [0.05] * 2 + [0.1] * 3) == (
        "labeled 40 %, pseudo 20 %, healthy 10 %, painted 30 %"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["finetune.painted_fraction=1.0"],
        ["finetune.painted_fraction=-0.1"],
        [
            "finetune.use_healthy=true",
            "finetune.healthy_fraction=0.7",
            "finetune.painted_fraction=0.3",
        ],
    ],
)
def test_painted_fraction_is_validated(tmp_path: Path, overrides: list[str]) -> None:
    from volseg.errors import ConfigError

    (tmp_path / "cfg.yaml").write_text(CONFIG)
    with pytest.raises(ConfigError, match="painted_fraction"):
        load_config(tmp_path / "cfg.yaml", overrides, run_dir=tmp_path / "run")


def test_painted_sources_are_painted_copies_of_train_ct0_only(
    prepared_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from volseg.data.paint import PAINT_CATEGORIES
    from volseg.stages.common import load_prepared

    run = _run_copy(prepared_run, tmp_path / "run")
    cfg = _config(run, tiny_dataset, "finetune.painted_fraction=0.3")
    prepared = load_prepared(cfg)
    dl = prepared.datalist
    assert finetune_painted.painted_sources(_config(run, tiny_dataset), prepared) == []  # off
    sources = finetune_painted.painted_sources(cfg, prepared)
    train_ct0 = [s.id for s in dl.healthy("train")]
    other_ct0 = [s.id for s in dl.healthy(("val", "test"))]
    assert train_ct0 and other_ct0  # the tiny set has CT-0 scans in every split
    expected = [
        f"{sid}_paint{c.lower().replace('-', '')}" for sid in train_ct0 for c in PAINT_CATEGORIES
    ]
    assert [s.id for s in sources] == expected
    records = [json.loads(p.read_text()) for p in finetune_painted.painted_dir(run).glob("*.json")]
    painted_from = {r["made_from"]["source_id"] for r in records}
    assert painted_from == set(train_ct0) and not painted_from & set(other_ct0)
    for src in sources:
        label, lungs = src.get("label"), src.get("lungs")
        assert label.any() and not (label.astype(bool) & ~lungs.astype(bool)).any()
        assert src.weight == 1.0 and src.shape == src.get("image").shape
    # the copy is on the source scan's working grid, brighter only inside its lungs
    first = sources[0].volume
    healthy = prepared.volumes[train_ct0[0]]
    assert first.shape == healthy.shape and np.allclose(first.affine, healthy.affine)
    gain = first.image().astype(np.float32) - healthy.image().astype(np.float32)
    assert gain[first.label().astype(bool)].mean() > 0.05

    # a second call (resume) repaints nothing and gives the same arrays
    images = {s.id: np.array(s.get("image")) for s in sources}
    labels = {s.id: np.array(s.get("label")) for s in sources}
    mtimes = {p: p.stat().st_mtime_ns for p in finetune_painted.painted_dir(run).rglob("*.*")}
    again = finetune_painted.painted_sources(cfg, prepared)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert all(np.array_equal(images[s.id], s.get("image")) for s in again)
    # another run seed paints other lesions
    reseeded = _config(run, tiny_dataset, "finetune.painted_fraction=0.3", "seed=1")
    other = finetune_painted.painted_sources(reseeded, prepared)
    assert not np.array_equal(other[0].get("label"), labels[sources[0].id])  # repainted


def test_paint_seed_is_stable_and_differs_per_study_and_category() -> None:
    seed = finetune_painted.paint_seed(0, "study_0001", "CT-1")
    assert seed == finetune_painted.paint_seed(0, "study_0001", "CT-1")
    assert 0 <= seed < 2**32
    others = [
        finetune_painted.paint_seed(1, "study_0001", "CT-1"),
        finetune_painted.paint_seed(0, "study_0002", "CT-1"),
        finetune_painted.paint_seed(0, "study_0001", "CT-2"),
    ]
    assert seed not in others and len(set(others)) == 3


def test_finetune_with_painted_copies_records_them_and_keeps_the_gate_on_val(
    prepared_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    run = _run_copy(prepared_run, tmp_path / "run")
    overrides = ("finetune.painted_fraction=0.3", "finetune.epochs=1")
    cfg = _config(run, tiny_dataset, *overrides)
    dl = Datalist.load(datalist_path(run))
    # the painted copies are the CT-0 training scans' anatomy: the gate is set on val alone
    assert finetune_sources.gate_healthy_studies(cfg, dl) == dl.healthy("val")
    run_finetune(cfg)
    summary = json.loads((run / "finetune" / "summary.json").read_text())
    assert len(summary["painted_ids"]) == 3 * len(dl.healthy("train"))
    assert all(
        i.split("_paint")[0] in {s.id for s in dl.healthy("train")} for i in summary["painted_ids"]
    )


def test_pseudo_until_switches_to_true_masks() -> None:
    from volseg.config import FinetuneConfig

    ft = FinetuneConfig(epochs=4, iters_per_epoch=10, pseudo_until=0.25)
    # 10 of 40 steps with pseudo-masks; 3 samples per step (e.g. batch 3 on one rank)
    [(first, probs)] = sampling.source_phases(2, 3, 0, ft, samples_per_step=3)
    assert first == 30
    assert probs == pytest.approx([0.5, 0.5, 0, 0, 0])
    # healthy scans keep their share (uniform: 1 of 3 non-pseudo sources each)
    [(_, probs)] = sampling.source_phases(1, 3, 2, ft, samples_per_step=1)
    assert probs == pytest.approx([1 / 3, 0, 0, 0, 1 / 3, 1 / 3])
    healthy = ft.model_copy(update={"healthy_fraction": 0.1})
    [(_, probs)] = sampling.source_phases(2, 1, 2, healthy, samples_per_step=1)
    assert probs == pytest.approx([0.45, 0.45, 0, 0.05, 0.05])
    # nothing to switch: whole run, no pseudo-masks, or no labeled scan to switch to
    assert sampling.source_phases(2, 3, 0, FinetuneConfig(), 3) == []
    assert sampling.source_phases(2, 0, 0, ft, 3) == []
    assert sampling.source_phases(0, 3, 0, ft, 3) == []


def test_pseudo_masks_only(prepared_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run = _run_copy(prepared_run, tmp_path / "run")
    dl = Datalist.load(datalist_path(run))
    # no labels and no pseudo-masks: a clear error
    cfg = _config(run, tiny_dataset, "finetune.n_labeled=0", "finetune.epochs=1")
    with pytest.raises(InputError, match="no training labels"):
        run_finetune(cfg)

    # fake GAN outputs: the true lesion masks of unlabeled COVID scans as pseudo-masks
    folder = pseudo_dir(run)
    folder.mkdir(parents=True)
    rows = []
    covid = dl.covid_unlabeled(("train", "val"))
    for i, study in enumerate(covid):
        data, affine = read_nifti(study.truth, dtype=np.float32)
        write_nifti(layout.pseudo_path(folder, study.id), data.astype(np.uint8), affine)
        rows.append(QcRow(study.id, dl.split_of(study.id), study.category, 1.0, 1.0, 1, i != 0, ""))
    write_qc(qc_path(run), rows)
    expected = sorted(r.study_id for r in rows if r.passed and r.split == "train")
    assert expected

    run_finetune(cfg)
    summary = json.loads((run / "finetune" / "summary.json").read_text())
    assert summary["labeled_ids"] == [] and sorted(summary["pseudo_ids"]) == expected
    assert summary["n_pseudo"] == len(expected)
    assert (run / "finetune" / "model.pt").is_file()


def test_fov_cut_prob_reaches_the_training_crops(
    prepared_run: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from volseg.data import patches

    seen: list[float] = []
    real = patches.SegPatchDataset

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            seen.append(kwargs["fov_cut_prob"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(patches, "SegPatchDataset", Spy)
    run = _run_copy(prepared_run, tmp_path / "run")
    run_finetune(_config(run, tiny_dataset, "finetune.fov_cut_prob=0.3", "finetune.epochs=1"))
    assert seen == [0.3]
    assert load_config(run / "cfg.yaml", []).finetune.fov_cut_prob == 0.0  # off by default
    with pytest.raises(ConfigError, match="fov_cut_prob"):
        load_config(run / "cfg.yaml", ["finetune.fov_cut_prob=1.5"])
