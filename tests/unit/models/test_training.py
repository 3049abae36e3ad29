"""Few-step learning checks: a tiny TransUNet3D overfits a blob, the generator removes painted
lesions."""

from __future__ import annotations

import numpy as np
import torch

from tests.blob_fitting import blob_volume, fit_blob
from volseg.models import Generator3D, TransUNet3D
from volseg.stages.gan_train import CropPainter

SIZE = (32, 32, 16)


def _blob_volume() -> tuple[torch.Tensor, torch.Tensor]:
    return blob_volume(SIZE, (14, 18, 8), (6, 5, 3), torch.Generator().manual_seed(0))


def test_tiny_transunet_overfits_one_volume() -> None:
    torch.manual_seed(0)
    image, label = _blob_volume()
    model = TransUNet3D(
        widths=(8, 16, 32),
        strides=((2, 2, 1), (2, 2, 2)),
        hidden_size=32,
        depth=1,
        num_heads=2,
        img_size=SIZE,
    )
    dice = fit_blob(model, image, label, lr=3e-3)
    assert dice > 0.9


def test_generator_learns_to_remove_painted_lesions() -> None:
    """The GAN's lesion painter (the project's one lesion model) on healthy crops: a few
    steps of restoration L1 already undo much of it."""
    torch.manual_seed(0)
    noise = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    lung = torch.zeros(1, *SIZE)
    lung[:, 2:30, 2:30, 1:15] = 1
    painter = CropPainter(spacing=(1.5, 1.5, 3.0), hu_window=(-1000.0, 400.0), categories=("CT-1",))

    def healthy(batch: int = 2) -> torch.Tensor:
        return 0.1 + 0.03 * torch.rand(batch, 1, *SIZE, generator=noise)

    def paint(
        clean: torch.Tensor, gen_rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [painter(c, lung, gen_rng) for c in clean]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    clean_eval = healthy(4)
    corrupted_eval, weight_eval = paint(clean_eval, np.random.default_rng(99))
    lesion = weight_eval > 0.2
    assert lesion.sum() > 50

    gen = Generator3D(widths=(8, 16, 32), strides=((2, 2, 1), (2, 2, 2)))

    def lesion_error() -> float:
        with torch.no_grad():
            return float((gen(corrupted_eval) - clean_eval).abs()[lesion].mean())

    before = lesion_error()
    opt = torch.optim.Adam(gen.parameters(), lr=3e-3)
    for _ in range(40):
        clean = healthy()
        corrupted, weight = paint(clean, rng)
        err = (gen(corrupted) - clean).abs()
        loss = err.mean() + (err * weight).sum() / weight.sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = lesion_error()
    assert after < 0.6 * before, (before, after)
