"""Linear probe on frozen encoder features: does a representation separate lesion voxels?

A sanity check for self-supervised pretraining. Voxels are sampled, balanced between lesion
and lung background, from labeled volumes; each voxel's feature vector is read from every
encoder output (skips and bottleneck) by trilinear interpolation at the voxel centre; a
logistic regression (torch, L-BFGS) is fitted on some volumes and scored on others with ROC
AUC and balanced accuracy. Comparing a pretrained encoder with a randomly initialised one
(and with the raw intensity alone) says whether pretraining learnt anything useful.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from volseg.utils import eval_mode

log = logging.getLogger(__name__)


class LabeledVolume(Protocol):
    """What the probe reads from a volume (``volseg.data.cache.CachedVolume`` fits)."""

    id: str

    def image(self) -> np.ndarray: ...

    def label(self) -> np.ndarray | None: ...

    def lungs(self) -> np.ndarray | None: ...


FeatureFn = Callable[[np.ndarray, np.ndarray], torch.Tensor]
"""``(image (X, Y, Z), points (N, 3)) -> features (N, C)``."""


@dataclasses.dataclass
class ProbeResult:
    """Scores of a linear probe on held-out voxels."""

    auc: float
    balanced_accuracy: float
    n_train: int
    n_test: int
    n_features: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LinearProbe(nn.Module):
    """Logistic regression on standardised features: ``(N, C) -> (N,)`` logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std).squeeze(-1)


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, *, steps: int = 200, l2: float = 1e-3
) -> LinearProbe:
    """Fit a logistic regression with L-BFGS (deterministic; L2 penalty ``l2`` on weights).

    Features are standardised with the training mean and std, so ``l2`` means the same for
    any feature scale.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (N, C) and y (N,), got {tuple(x.shape)}, {tuple(y.shape)}")
    x = x.double()
    y = y.double()
    std = x.std(dim=0, correction=0)
    probe = LinearProbe(x.mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std)))
    probe.double()
    opt = torch.optim.LBFGS(
        probe.linear.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(probe(x), y)
        loss = loss + l2 * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return probe


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (MONAI); NaN when only one class is present."""
    from monai.metrics import compute_roc_auc

    labels = labels.long()
    if labels.min() == labels.max():
        return math.nan
    return float(compute_roc_auc(scores.double(), labels))


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of sensitivity and specificity of boolean predictions; NaN if a class is absent."""
    pred, labels = pred.bool(), labels.bool()
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return math.nan
    tpr = float((pred & labels).sum()) / pos
    tnr = float((~pred & ~labels).sum()) / neg
    return 0.5 * (tpr + tnr)


def linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    steps: int = 200,
    l2: float = 1e-3,
) -> ProbeResult:
    """Fit on ``(x_train, y_train)``, score AUC and balanced accuracy on the test set."""
    probe = fit_linear_probe(x_train, y_train, steps=steps, l2=l2)
    with torch.no_grad():
        logits = probe(x_test.double())
    return ProbeResult(
        auc=roc_auc(logits, y_test),
        balanced_accuracy=balanced_accuracy(logits > 0, y_test),
        n_train=int(x_train.shape[0]),
        n_test=int(x_test.shape[0]),
        n_features=int(x_train.shape[1]),
    )


# ----------------------------------------------------------------------------- voxels


def sample_voxels(
    label: np.ndarray, lungs: np.ndarray | None, n_per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n_per_class`` lesion and as many background voxels (inside ``lungs``).

    Both classes get the same count (the smaller of ``n_per_class`` and what is
    available). Returns ``points (N, 3)`` int64 voxel indices and ``y (N,)`` float32.
    Without a lung mask, background is any non-lesion voxel.
    """
    lesion = np.asarray(label) > 0
    background = ~lesion if lungs is None else (np.asarray(lungs) > 0) & ~lesion
    pos, neg = np.flatnonzero(lesion), np.flatnonzero(background)
    n = min(n_per_class, pos.size, neg.size)
    if n == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.float32)
    flat = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    points = np.stack(np.unravel_index(flat, lesion.shape), axis=1).astype(np.int64)
    y = np.concatenate([np.ones(n, np.float32), np.zeros(n, np.float32)])
    return points, y


def _grid(points: np.ndarray, padded: Sequence[int], offset: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` coordinates of voxel centres in a padded input of shape ``padded``.

    With ``align_corners=False`` a feature map of any size ``W`` that covers the padded input
    puts input voxel ``i`` at normalised ``(2 (i + offset) + 1) / padded - 1``. The grid's
    last axis lists (x, y, z) = the tensor's (W, H, D) axes, i.e. ours reversed.
    """
    p = torch.as_tensor(points, dtype=torch.float64)
    size = torch.as_tensor(padded, dtype=torch.float64)
    off = torch.as_tensor(offset, dtype=torch.float64)
    norm = (2.0 * (p + off) + 1.0) / size - 1.0
    return norm.flip(-1).float().view(1, -1, 1, 1, 3)


@torch.no_grad()
def encoder_features_at(
    encoder: nn.Module, image: np.ndarray, points: np.ndarray, device: torch.device | None = None
) -> torch.Tensor:
    """Features ``(N, C)`` of a frozen encoder at voxel ``points`` of a whole volume.

    ``encoder(x)`` must return ``(skips, bottleneck)``; every map is read at the voxel
    centres by trilinear interpolation and the results are concatenated. The volume is
    zero-padded to a multiple of ``encoder.total_stride`` (when it has one) so each map
    covers the padded input exactly.
    """
    from volseg.models._common import pad_to_multiple

    device = device or next(encoder.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    stride = tuple(getattr(encoder, "total_stride", (1, 1, 1)))
    x, region = pad_to_multiple(x, stride)
    with eval_mode(encoder):
        skips, bottleneck = encoder(x)
    grid = _grid(points, x.shape[-3:], [r.start for r in region]).to(device)
    feats = [
        F.grid_sample(
            m.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).flatten(2)[0]
        for m in [*skips, bottleneck]
    ]
    return torch.cat(feats, dim=0).T.cpu()


def intensity_features_at(image: np.ndarray, points: np.ndarray) -> torch.Tensor:
    """The baseline feature: the voxel's own intensity, ``(N, 1)``."""
    values = np.asarray(image, dtype=np.float32)[tuple(points.T)]
    return torch.from_numpy(values)[:, None]


def collect(
    volumes: Sequence[LabeledVolume],
    feature_fns: dict[str, FeatureFn],
    n_per_class: int,
    seed: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sample voxels from each labeled volume once; features from every ``feature_fns``.

    Returns ``({name: (N, C)}, y (N,))``; the same voxels feed every feature set, so the
    comparison between representations is paired.
    """
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in feature_fns}
    ys: list[torch.Tensor] = []
    for i, vol in enumerate(volumes):
        label = vol.label()
        if label is None:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        points, y = sample_voxels(np.asarray(label), vol.lungs(), n_per_class, rng)
        if not len(y):
            continue
        image = np.asarray(vol.image(), dtype=np.float32)
        for name, fn in feature_fns.items():
            feats[name].append(fn(image, points))
        ys.append(torch.from_numpy(y))
    if not ys:
        return {name: torch.zeros(0, 0) for name in feature_fns}, torch.zeros(0)
    return {n: torch.cat(v) for n, v in feats.items()}, torch.cat(ys)


def split_probe_volumes(
    train: Sequence[LabeledVolume], val: Sequence[LabeledVolume]
) -> tuple[list[LabeledVolume], list[LabeledVolume], str] | None:
    """Which volumes to fit on and which to score on, and a description of the split.

    Fit on the labeled train volumes and score on the labeled val volumes; without any
    labeled val volume, hold out half of the train volumes. None when that is impossible.
    """
    train = [v for v in train if v.label() is not None]
    val = [v for v in val if v.label() is not None]
    if train and val:
        return list(train), list(val), "fit on train, scored on val"
    if len(train) >= 2:
        half = len(train) // 2
        return list(train[half:]), list(train[:half]), "fit and scored on disjoint train scans"
    return None


def probe_representations(
    fit_volumes: Sequence[LabeledVolume],
    score_volumes: Sequence[LabeledVolume],
    feature_fns: dict[str, FeatureFn],
    *,
    n_per_class: int = 500,
    seed: int = 0,
    steps: int = 200,
    l2: float = 1e-3,
) -> dict[str, ProbeResult]:
    """A linear probe per named representation, on the same sampled voxels for all."""
    x_fit, y_fit = collect(fit_volumes, feature_fns, n_per_class, seed)
    x_score, y_score = collect(score_volumes, feature_fns, n_per_class, seed + 1)
    if not len(y_fit) or not len(y_score):
        raise ValueError("no lesion voxels to probe with (labeled volumes have empty masks)")
    return {
        name: linear_probe(x_fit[name], y_fit, x_score[name], y_score, steps=steps, l2=l2)
        for name in feature_fns
    }
