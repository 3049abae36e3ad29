"""MONAI training chains: lesion-biased crops and augmentation keep shapes and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volseg.data.transforms import train_transforms


@pytest.mark.parametrize("labeled", [True, False])
def test_train_transforms_crop_shapes_and_determinism(labeled: bool) -> None:
    from monai.data import MetaTensor

    rng = np.random.default_rng(0)
    shape = (20, 18, 6)  # smaller than the patch along z: padded
    lungs = np.zeros(shape, np.float32)
    lungs[3:17, 3:15, 1:5] = 1
    label = np.zeros(shape, np.float32)
    label[5:7, 5:7, 2:4] = 1
    data = {
        "image": MetaTensor(torch.as_tensor(rng.random(shape, dtype=np.float32))[None]),
        "label": MetaTensor(torch.as_tensor(label)[None]),
        "lungs": MetaTensor(torch.as_tensor(lungs)[None]),
    }
    chain = train_transforms((12, 12, 8), labeled=labeled, pos_fraction=1.0, num_samples=3)
    chain.set_random_state(seed=5)
    first = chain(dict(data))
    chain.set_random_state(seed=5)
    second = chain(dict(data))
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert tuple(a["image"].shape) == (1, 12, 12, 8)
        assert torch.equal(a["image"], b["image"])
        key = "label" if labeled else "lungs"
        assert set(torch.unique(a[key]).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="pos_fraction"):
        train_transforms((8, 8, 8), pos_fraction=1.5)
