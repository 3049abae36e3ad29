"""Few-step learning checks: a tiny TransUNet3D overfits a blob, the generator removes blobs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from volseg.models import Generator3D, LesionCorruptor, TransUNet3D

SIZE = (32, 32, 16)


def _blob_volume() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    d, h, w = (torch.arange(n, dtype=torch.float32) for n in SIZE)
    dist = (
        ((d[:, None, None] - 14) / 6) ** 2
        + ((h[None, :, None] - 18) / 5) ** 2
        + ((w[None, None, :] - 8) / 3) ** 2
    )
    label = (dist <= 1).float()[None, None]
    image = 0.1 + 0.05 * torch.rand(1, 1, *SIZE, generator=gen) + 0.4 * label
    return image, label


def _dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    return float(2 * (pred * ref).sum() / (pred.sum() + ref.sum()))


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
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    dice = 0.0
    for _ in range(80):
        logits = model(image)
        prob = torch.sigmoid(logits)
        soft_dice = (2 * (prob * label).sum() + 1) / (prob.sum() + label.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, label) + 1 - soft_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            dice = _dice((logits > 0).float(), label)
        if dice > 0.93:
            break
    with torch.no_grad():
        dice = _dice((model(image) > 0).float(), label)
    assert dice > 0.9


def test_generator_learns_to_remove_planted_blobs() -> None:
    torch.manual_seed(0)
    noise = torch.Generator().manual_seed(0)
    lung = torch.ones(2, 1, *SIZE)
    corruptor = LesionCorruptor(blobs=(1, 3), radius_mm=(3.0, 8.0), spacing=(1.5, 1.5, 3.0))

    def healthy(batch: int = 2) -> torch.Tensor:
        return 0.1 + 0.03 * torch.rand(batch, 1, *SIZE, generator=noise)

    clean_eval = healthy(4)
    corrupted_eval, weight_eval = corruptor(
        clean_eval, torch.ones_like(clean_eval), torch.Generator().manual_seed(99)
    )
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
        corrupted, weight = corruptor(clean, lung, noise)
        err = (gen(corrupted) - clean).abs()
        loss = err.mean() + (err * weight).sum() / weight.sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = lesion_error()
    assert after < 0.6 * before, (before, after)
