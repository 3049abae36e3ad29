"""Supervised contrastive loss (Khosla et al. 2020) on sampled voxel embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from volseg.losses._weights import at_least_float32


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """An exact scalar 0 that stays attached to ``x``'s graph (backward gives zero gradients)."""
    return at_least_float32(x.sum()) * 0.0


def supcon_from_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss ("L_out", Khosla et al., NeurIPS 2020) over N samples.

    With ``f_i = features_i / ||features_i||``, ``s_ij = f_i·f_j / τ``, ``A(i) = {j ≠ i}`` and
    positives ``P(i) = {p ∈ A(i) : y_p = y_i}``::

        ℓ_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip) / Σ_{a∈A(i)} exp(s_ia) )
        L   = Σ_{i : |P(i)|≥1} w_i ℓ_i / #{i : |P(i)| ≥ 1}

    Self-pairs are excluded from numerator and denominator; anchors without a positive are
    skipped; ``w_i`` defaults to 1 (a weight below 1 makes an anchor count less). With no valid
    anchor the result is an exact 0 that still carries a (zero) gradient.

    Args:
        features: ``(N, E)`` embeddings (need not be normalised).
        labels: ``(N,)`` integer class labels.
        temperature: τ > 0.
        weights: optional ``(N,)`` non-negative anchor weights.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if features.ndim != 2:
        raise ValueError(f"features must have shape (N, E), got {tuple(features.shape)}")
    n = features.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = F.normalize(at_least_float32(features), dim=1)
        sim = f @ f.T / temperature
        self_mask = torch.eye(n, dtype=torch.bool, device=f.device)
        log_denominator = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1)
        log_prob = sim - log_denominator[:, None]
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = positives.sum(dim=1)
        anchors = n_pos > 0
        if not bool(anchors.any()):
            return _zero_like_graph(f)
        mean_log_prob_pos = (log_prob * positives).sum(dim=1)[anchors] / n_pos[anchors]
        per_anchor = -mean_log_prob_pos
        if weights is not None:
            per_anchor = per_anchor * weights[anchors].to(per_anchor.dtype)
        return per_anchor.mean()


def _pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max-pool ``x`` ``(B, 1, *spatial)`` with a cube of side ``2·radius + 1``, same size out."""
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[x.ndim - 2]
    return pool(x, kernel_size=2 * radius + 1, stride=1, padding=radius)


def boundary_bands(lesion: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-example bands of a binary mask ``(B, 1, *spatial)``: (inner lesion rim, outer ring).

    Dilation is a max-pool, erosion a max-pool of the complement; the inner rim is
    ``lesion ∖ eroded`` and the outer ring ``dilated ∖ lesion`` (background touching lesion).
    """
    x = lesion.float()
    dilated = _pool(x, radius) > 0.5
    eroded = (1.0 - _pool(1.0 - x, radius)) > 0.5
    return lesion & ~eroded, dilated & ~lesion


def _pick(candidates: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Up to ``k`` random flat indices where the 1-D bool ``candidates`` is True."""
    idx = torch.nonzero(candidates, as_tuple=False).flatten()
    if k <= 0 or idx.numel() == 0:
        return idx[:0]
    device = generator.device if generator is not None else idx.device
    order = torch.randperm(idx.numel(), generator=generator, device=device).to(idx.device)
    return idx[order[:k]]


class SupConVoxelLoss(nn.Module):
    """Supervised contrastive loss on voxel embeddings (Khosla et al., NeurIPS 2020).

    For each volume up to ``max_per_class`` lesion and ``max_per_class`` background voxels
    are sampled (a ``hard_fraction`` of them, where available, from the boundary bands found
    by dilation/erosion of the label), their embeddings are pooled over the batch and passed
    to :func:`supcon_from_features` (L2-normalised, similarity / τ, self-pairs excluded,
    positives = same class; see its docstring for the formula). Per-voxel ``weights`` become
    anchor weights; voxels with weight 0 or outside ``valid_mask`` are never sampled.

    The loss is an exact 0 (with gradient, no NaN) when the sampled batch holds one class
    only: without negatives SupCon would only pull every embedding together.

    Sampling uses ``generator`` when given, else the global RNG of the embeddings' device,
    so it is deterministic under ``torch.manual_seed``.

    Args:
        temperature: τ > 0 (Khosla et al. use 0.1).
        max_per_class: K ≥ 1, voxels sampled per class per volume.
        hard_fraction: share of the K drawn from the boundary bands, in [0, 1].
        boundary_radius: dilation/erosion radius in voxels (≥ 1) defining the bands.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        max_per_class: int = 256,
        hard_fraction: float = 0.5,
        boundary_radius: int = 1,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if int(max_per_class) != max_per_class or max_per_class < 1:
            raise ValueError(f"max_per_class must be an integer >= 1, got {max_per_class}")
        if not 0.0 <= hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
        if int(boundary_radius) != boundary_radius or boundary_radius < 1:
            raise ValueError(f"boundary_radius must be an integer >= 1, got {boundary_radius}")
        self.temperature = float(temperature)
        self.max_per_class = int(max_per_class)
        self.hard_fraction = float(hard_fraction)
        self.boundary_radius = int(boundary_radius)

    def sample(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        valid_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample voxels: returns features ``(N, E)``, labels ``(N,)`` in {0,1}, weights ``(N,)``.

        ``labels``/``weights``/``valid_mask`` are ``(B, 1, *spatial)``; when their spatial
        size differs from the embeddings' they are resized with nearest-neighbour sampling.
        """
        if embeddings.ndim not in (3, 4, 5):
            raise ValueError(
                f"embeddings must have shape (B, E, *spatial) with 1-3 spatial dims, "
                f"got {tuple(embeddings.shape)}"
            )
        b, e = embeddings.shape[:2]
        spatial = embeddings.shape[2:]
        lesion = self._to_grid(labels, "labels", b, spatial) > 0.5
        eligible = torch.ones_like(lesion)
        if valid_mask is not None:
            eligible &= self._to_grid(valid_mask, "valid_mask", b, spatial) > 0.5
        w = None
        if weights is not None:
            w = self._to_grid(weights, "weights", b, spatial)
            if bool((w < 0).any()):
                raise ValueError("weights must be non-negative")
            eligible &= w > 0
        inner, outer = boundary_bands(lesion, self.boundary_radius)

        n_hard = round(self.hard_fraction * self.max_per_class)
        flat_emb = embeddings.reshape(b, e, -1)
        feats, labs, wts = [], [], []
        for i in range(b):
            for cls, members, band in ((1, lesion[i], inner[i]), (0, ~lesion[i], outer[i])):
                cand = (members & eligible[i]).flatten()
                hard = _pick(cand & band.flatten(), n_hard, generator)
                rest = cand.clone()
                rest[hard] = False
                ids = torch.cat([hard, _pick(rest, self.max_per_class - hard.numel(), generator)])
                feats.append(flat_emb[i, :, ids].T)
                labs.append(torch.full((ids.numel(),), cls, dtype=torch.long, device=ids.device))
                wts.append(
                    w[i].flatten()[ids]
                    if w is not None
                    else torch.ones(ids.numel(), device=embeddings.device)
                )
        return torch.cat(feats), torch.cat(labs), torch.cat(wts)

    @staticmethod
    def _to_grid(x: torch.Tensor, name: str, b: int, spatial: torch.Size) -> torch.Tensor:
        """Check ``x`` is ``(B, 1, *spatial')`` and bring it to the embeddings' grid."""
        if x.ndim != len(spatial) + 2 or x.shape[0] != b or x.shape[1] != 1:
            raise ValueError(f"{name} must have shape (B={b}, 1, *spatial), got {tuple(x.shape)}")
        x = x.float()
        if x.shape[2:] != spatial:
            x = F.interpolate(x, size=tuple(spatial), mode="nearest")
        return x

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        valid_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scalar loss for ``embeddings`` ``(B, E, *spatial)`` and labels ``(B, 1, *spatial)``."""
        feats, labs, wts = self.sample(embeddings, labels, weights, valid_mask, generator)
        if labs.numel() < 2 or bool((labs == labs[0]).all()):
            return _zero_like_graph(embeddings)
        return supcon_from_features(feats, labs, self.temperature, None if weights is None else wts)
