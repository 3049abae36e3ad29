"""Checkpoint files: RNG round trip, atomic writes, clear errors for bad files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from volseg.engine.checkpoint import (
    FORMAT,
    VERSION,
    capture_rng_state,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
    save_checkpoint,
)
from volseg.errors import InputError


def _draws() -> tuple:
    return random.random(), np.random.standard_normal(2).tolist(), torch.rand(3).tolist()


def _payload(**extra: object) -> dict:
    net = torch.nn.Linear(2, 1)
    return {
        "format": FORMAT,
        "version": VERSION,
        "modules": {"net": net.state_dict()},
        "model_args": {"net": {"in_features": 2, "shape": (2, 1)}},
        "rng": [capture_rng_state()],
        **extra,
    }


def test_rng_states_survive_a_save_and_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    np.random.standard_normal()  # leave a cached Gaussian in the legacy state
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path / "c.pt", _payload())
    expected = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    restore_rng_state(load_checkpoint(path)["rng"][0])
    assert _draws() == expected


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    dest = tmp_path / "checkpoint_last.pt"
    save_checkpoint(dest, _payload(step=1))
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        save_checkpoint(dest, _payload(step=2, bad=lambda: 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]
    assert load_checkpoint(dest)["step"] == 1


def test_model_weights_and_constructor_args(tmp_path: Path) -> None:
    payload = _payload()
    path = save_checkpoint(tmp_path / "c.pt", payload)
    weights, kwargs = load_model_weights(path, "net")
    assert kwargs == {"in_features": 2, "shape": (2, 1)}
    assert torch.equal(weights["weight"], payload["modules"]["net"]["weight"])
    with pytest.raises(InputError, match="no module named 'gen'.*has: net"):
        load_model_weights(path, "gen")


def test_bad_files_raise_input_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(junk)
    truncated = tmp_path / "truncated.pt"
    good = save_checkpoint(tmp_path / "good.pt", _payload())
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(InputError, match="foreign.pt: not a volseg checkpoint"):
        load_checkpoint(foreign)
    future = save_checkpoint(tmp_path / "future.pt", _payload(version=VERSION + 1))
    with pytest.raises(InputError, match="newer"):
        load_checkpoint(future)
