"""One picture of the evaluated cases: a row per case (lowest Dice first), three axial slices
through its reference lesion, the CT in lung window with prediction and reference outlined.

It shows what the numbers mean (a missed lesion, a false positive in dependent lung) at a
glance; the slices are chosen from the reference so that misses are in view.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_CASES = 16
SLICES_PER_CASE = 3


def montage_slices(ref: np.ndarray, pred: np.ndarray, n: int = SLICES_PER_CASE) -> list[int]:
    """``n`` axial slices (last axis, RAS) spread over the reference lesion's extent; the
    prediction's when the reference is empty; the whole volume when both are."""
    for mask in (ref, pred):
        per_slice = mask.sum(axis=(0, 1))
        hit = np.flatnonzero(per_slice)
        if hit.size:
            lo, hi = int(hit[0]), int(hit[-1])
            break
    else:
        lo, hi = 0, ref.shape[2] - 1
    picks = np.linspace(lo, hi, n + 2)[1:-1] if hi > lo else np.full(n, lo)
    return sorted({int(round(k)) for k in picks})


def write_montage(
    cases: Sequence[Mapping[str, Any]],
    images: Mapping[str, Path],
    masks: Mapping[str, tuple[Path, Path]],
    dest: Path,
    max_cases: int = MAX_CASES,
) -> list[str]:
    """Draw the ``max_cases`` lowest-Dice cases that have an image on the reference grid
    into ``dest`` (PNG, written atomically); returns the case ids drawn, in order.

    ``images``: case id → CT; ``masks``: case id → (prediction, reference). A case whose
    CT is not on the reference's grid is left out with a log line.
    """
    from matplotlib.figure import Figure

    from volseg.evaluation.cases import same_grid
    from volseg.inference.overlays import RasView, legend
    from volseg.io import atomic_path, read_nifti

    def dice_key(row: Mapping[str, Any]) -> float:
        value = row.get("dice")
        return math.inf if value is None or not math.isfinite(float(value)) else float(value)

    chosen = [r for r in sorted(cases, key=dice_key) if r["case_id"] in images][:max_cases]
    panels = []
    for row in chosen:
        sid = row["case_id"]
        ct, ct_affine = read_nifti(images[sid])
        pred, _ = read_nifti(masks[sid][0])
        ref, ref_affine = read_nifti(masks[sid][1])
        if not same_grid(ct.shape, ct_affine, ref.shape, ref_affine) or pred.shape != ref.shape:
            log.info("montage: %s left out (CT not on the reference grid)", sid)
            continue
        view = RasView(ct, ct_affine)
        lesion, reference = view.mask(pred), view.mask(ref)
        panels.append((row, view, lesion, reference, montage_slices(reference, lesion)))
    if not panels:
        return []
    fig = Figure(figsize=(3.0 * SLICES_PER_CASE, 3.0 * len(panels)))
    for i, (row, view, lesion, reference, slices) in enumerate(panels):
        for j in range(SLICES_PER_CASE):
            ax = fig.add_subplot(len(panels), SLICES_PER_CASE, i * SLICES_PER_CASE + j + 1)
            if j >= len(slices):
                ax.axis("off")
                continue
            view.draw(ax, slices[j], lesion, None, reference)
            dice = row.get("dice")
            shown = "–" if dice is None or not math.isfinite(float(dice)) else f"{dice:.2f}"
            ax.set_title(f"{row['case_id']}  Dice {shown}  slice {slices[j]}", fontsize=7)
    legend(fig.axes[0], False, True)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    return [row["case_id"] for row, *_ in panels]
