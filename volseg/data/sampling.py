"""Fine-tuning's sampling policy: which labeled scans, and each patch source's share of crops.

Sources are ordered labeled, pseudo-labeled, healthy, painted (built by
:mod:`volseg.stages.finetune_sources` and :mod:`volseg.stages.finetune_painted`).
``finetune.pseudo_fraction``, ``healthy_fraction``, ``painted_fraction`` and
``pseudo_until`` set the shares and the phase switch (see
:class:`volseg.config.FinetuneConfig`); :class:`volseg.data.patches.SegPatchDataset` draws
from them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from volseg.data.mosmed import Study
from volseg.errors import InputError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from volseg.config import FinetuneConfig


def select_labeled(studies: Sequence[Study], n: int | None, seed: int) -> list[Study]:
    """At most ``n`` of ``studies`` (all when None), chosen deterministically from ``seed``.

    Stratified by CT category: each category gets its share of ``n`` (largest remainder,
    ties to the category name), its members drawn in a seeded random order. Sorted by id.
    """
    studies = sorted(studies, key=lambda s: s.id)
    if n is None or n >= len(studies):
        return studies
    groups: dict[str, list[Study]] = {}
    for s in studies:
        groups.setdefault(s.category, []).append(s)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    for name in names:
        order = rng.permutation(len(groups[name]))
        groups[name] = [groups[name][i] for i in order]
    exact = {c: n * len(groups[c]) / len(studies) for c in names}
    quota = {c: int(math.floor(exact[c])) for c in names}
    for c in sorted(names, key=lambda c: (-(exact[c] - quota[c]), c))[: n - sum(quota.values())]:
        quota[c] += 1
    chosen = [s for c in names for s in groups[c][: quota[c]]]
    return sorted(chosen, key=lambda s: s.id)


def source_probabilities(
    n_labeled: int,
    n_pseudo: int,
    n_healthy: int,
    ft: FinetuneConfig,
    *,
    pseudo: bool = True,
    n_painted: int = 0,
) -> list[float] | None:
    """Per-source sampling probabilities for sources ordered labeled, pseudo, healthy, painted.

    The painted scans together get ``painted_fraction`` (they exist only with it set), the
    healthy scans ``healthy_fraction`` and the lesion scans share the rest: evenly, or, with
    ``pseudo_fraction`` and both kinds present, that share of it to the pseudo-labeled scans
    and the remainder to the labeled ones. Without ``healthy_fraction`` the healthy scans
    are drawn like the lesion scans within what the painted ones leave. With
    ``pseudo=False`` the pseudo-labeled scans get 0 and the labeled scans take their share.
    None (uniform over all sources) when nothing needs weighting.
    """
    if n_painted and ft.painted_fraction is None:
        raise ValueError("painted sources without finetune.painted_fraction")
    n_drawn = n_pseudo if pseudo else 0  # pseudo-labeled scans that are drawn at all
    n_lesion = n_labeled + n_drawn
    pseudo_fraction = ft.pseudo_fraction if n_labeled and n_drawn else None
    fraction = ft.healthy_fraction if n_healthy else None
    painted = ft.painted_fraction if n_painted else None
    if n_healthy and fraction is not None and n_lesion == 0:
        raise InputError("finetune: healthy scans alone cannot train the network")
    if painted is not None and n_lesion == 0:
        raise InputError("finetune: painted scans need labeled or pseudo-labeled scans beside")
    if fraction is None and pseudo_fraction is None and painted is None and n_drawn == n_pseudo:
        return None  # every source drawn alike
    rest = 1.0 - (painted or 0.0)  # what the painted scans leave
    if fraction is None:
        fraction = rest * n_healthy / (n_lesion + n_healthy)  # uniform over lesion + healthy
    lesion_share = rest - fraction
    if pseudo_fraction is None:  # the lesion scans drawn alike
        labeled_p = lesion_share / n_lesion
        pseudo_p = labeled_p if n_drawn else 0.0
    else:
        labeled_p = lesion_share * (1.0 - pseudo_fraction) / n_labeled
        pseudo_p = lesion_share * pseudo_fraction / n_drawn
    probs = [labeled_p] * n_labeled + [pseudo_p] * n_pseudo
    probs += [fraction / n_healthy] * n_healthy if n_healthy else []
    return probs + [painted / n_painted] * n_painted if painted is not None else probs


def source_phases(
    n_labeled: int,
    n_pseudo: int,
    n_healthy: int,
    ft: FinetuneConfig,
    samples_per_step: int,
    *,
    n_painted: int = 0,
) -> list[tuple[int, list[float] | None]]:
    """``SegPatchDataset.source_phases`` for ``finetune.pseudo_until``: from that share of
    the steps on, no pseudo-labeled crops (none needed when there is nothing to switch)."""
    if ft.pseudo_until >= 1.0 or n_pseudo == 0 or n_labeled == 0:
        return []
    switch_step = math.ceil(ft.pseudo_until * ft.epochs * ft.iters_per_epoch)
    probs = source_probabilities(
        n_labeled, n_pseudo, n_healthy, ft, pseudo=False, n_painted=n_painted
    )
    return [(switch_step * samples_per_step, probs)]


def crop_shares(counts: Sequence[int], probs: Sequence[float] | None) -> str:
    """``labeled 50 %, pseudo 50 %, healthy 0 %`` for the log (uniform when ``probs`` is
    None); counts are labeled, pseudo, healthy and, when given, painted sources."""
    total = sum(counts)
    shares, start = [], 0
    names = ("labeled", "pseudo", "healthy", "painted")[: len(counts)]
    for name, n in zip(names, counts, strict=True):
        share = n / total if probs is None else sum(probs[start : start + n])
        shares.append(f"{name} {100 * share:.0f} %")
        start += n
    return ", ".join(shares)
