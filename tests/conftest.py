"""Shared test fixtures. Tests run on CPU with one thread per process for repeatability."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


@pytest.fixture(scope="session")
def real_ct() -> Path:
    """The real CT fixture (TotalSegmentator test file, Apache-2.0); skipped if absent."""
    path = SHARED_REAL / "example_ct_sm.nii.gz"
    if not path.exists():
        pytest.skip(f"real CT fixture not found at {path}")
    return path


@pytest.fixture(scope="session")
def real_lungs() -> Path:
    path = SHARED_REAL / "example_ct_sm_lungs.nii.gz"
    if not path.exists():
        pytest.skip(f"real lung mask fixture not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` synthetic MosMed-layout dataset (seed 0), generated once per session.

    Treat it as read-only: every test in the session shares it.
    """
    from volseg.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("tiny_dataset") / "data"
    return synthesize_dataset(root, preset="tiny", seed=0, workers=2)  # made in a pool
