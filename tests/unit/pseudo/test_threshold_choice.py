"""Which scans calibrate the pseudo-mask threshold (volseg.stages.gan.choose_threshold)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from volseg.config import load_config
from volseg.stages.common import Prepared
from volseg.stages.gan import choose_threshold


@dataclass
class FakeVolume:
    """A cached volume whose residual is a bright cube of value ``level`` (its lesion)."""

    id: str
    level: float
    has_label: bool = True
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def truth(self) -> np.ndarray:
        mask = np.zeros((12, 12, 12), bool)
        mask[3:9, 3:9, 3:9] = True
        return mask

    def label(self) -> np.ndarray:
        return self.truth().astype(np.uint8)

    def lungs(self) -> np.ndarray:
        return np.ones((12, 12, 12), np.uint8)


class FakeDatalist:
    def __init__(self, splits: dict[str, list[tuple[str, str, bool]]]) -> None:
        self.splits = splits  # split -> [(id, category, labeled)]

    def _studies(self, split: str, keep) -> list[SimpleNamespace]:  # noqa: ANN001
        return [
            SimpleNamespace(id=i, category=c, labeled=lab)
            for i, c, lab in self.splits.get(split, [])
            if keep(c, lab)
        ]

    def labeled(self, split: str) -> list[SimpleNamespace]:
        return self._studies(split, lambda c, lab: lab)

    def healthy(self, split: str) -> list[SimpleNamespace]:
        return self._studies(split, lambda c, lab: c == "CT-0")


def _residual(vol: FakeVolume) -> np.ndarray:
    """Background 0.01; the lesion cube at ``vol.level``: any threshold in between is perfect."""
    res = np.full((12, 12, 12), 0.01, np.float32)
    res[vol.truth()] = vol.level
    return res


def _choose(splits: dict[str, list[tuple[str, str, bool]]], levels: dict[str, float]):  # noqa: ANN202
    cfg = load_config(overrides=["gan.min_component_mm3=0"])
    volumes = {i: FakeVolume(i, lv, has_label=i.startswith("lab")) for i, lv in levels.items()}
    return choose_threshold(cfg, Prepared(FakeDatalist(splits), volumes), _residual)


def test_threshold_is_calibrated_on_labeled_val_scans_when_there_are_any() -> None:
    splits = {
        "train": [("lab_t1", "CT-1", True), ("lab_t2", "CT-1", True), ("h1", "CT-0", False)],
        "val": [("lab_v1", "CT-1", True)],
        "test": [("lab_x1", "CT-1", True)],
    }
    # Train lesions are faint (0.02), the val lesion bright (0.5): the calibrated threshold
    # must separate the val scan's lesion (> 0.01) whatever the train scans say. The
    # labeled test scan's lesion (0.005, below the background) would drag it under 0.01.
    levels = {"lab_t1": 0.02, "lab_t2": 0.02, "lab_v1": 0.5, "h1": 0.0, "lab_x1": 0.005}
    threshold, how = _choose(splits, levels)
    assert how["method"] == "calibrated" and how["split"] == "val"
    assert how["studies"] == ["lab_v1"]
    assert how["mean_dice"] == pytest.approx(1.0)
    assert 0.01 < threshold <= 0.5


def test_threshold_falls_back_to_labeled_train_then_to_healthy_residuals() -> None:
    """Never the test split: its labeled and healthy scans are there to be misused."""
    train = [("lab_t1", "CT-1", True), ("h1", "CT-0", False)]
    test = [("lab_x1", "CT-1", True), ("hx", "CT-0", False)]
    levels = {"lab_t1": 0.3, "h1": 0.0, "lab_x1": 0.005, "hx": 0.9}
    _, how = _choose({"train": train, "val": [], "test": test}, levels)
    assert how["method"] == "calibrated" and how["split"] == "train"
    assert how["studies"] == ["lab_t1"]

    splits = {"train": [("h1", "CT-0", False)], "val": [], "test": test}
    threshold, how = _choose(splits, levels)
    assert how["method"] == "healthy_percentile" and how["studies"] == ["h1"]
    # the healthy residual is 0.01 everywhere; the test scan's 0.9 cube would raise it
    assert threshold == pytest.approx(0.01)
