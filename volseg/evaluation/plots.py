"""Evaluation plots (PNG, matplotlib's Agg canvas, no display needed), written atomically.

Uses :class:`matplotlib.figure.Figure` directly rather than ``pyplot`` so no global backend
or figure state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.io import atomic_path


def _save(fig: Any, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(dest)


def _pairs(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> tuple[np.ndarray, ...]:
    xs, ys = [], []
    for r in rows:
        x, y = r.get(x_key), r.get(y_key)
        if x is None or y is None or not (math.isfinite(float(x)) and math.isfinite(float(y))):
            continue
        xs.append(float(x))
        ys.append(float(y))
    return np.asarray(xs), np.asarray(ys)


def plot_dice_vs_burden(
    rows: Sequence[Mapping[str, Any]], dest: Path, x_key: str = "ref_involvement_pct"
) -> Path:
    """Scatter of per-case Dice against reference burden (involvement % or volume mL).

    Open markers so that overlapping cases stay visible; cases the presence gate emptied
    (``gated``) are crosses, so a Dice of 0 from the gate is told apart from a miss.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    n = 0
    for gated, marker, label in ((False, "o", "scored"), (True, "x", "gated (emptied)")):
        x, y = _pairs([r for r in rows if bool(r.get("gated")) is gated], x_key, "dice")
        n += len(x)
        if len(x) or not gated:
            ax.scatter(
                x,
                y,
                s=28,
                marker=marker,
                facecolors="none" if marker == "o" else "C3",
                edgecolors="C0" if marker == "o" else None,
                linewidths=1.0,
                alpha=0.8,
                label=f"{label} ({len(x)})",
            )
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(
        "reference lung involvement (%)"
        if x_key == "ref_involvement_pct"
        else "reference lesion volume (mL)"
    )
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Dice vs infection burden (n = {n})")
    ax.grid(alpha=0.3)
    return _save(fig, dest)


def plot_bland_altman(rows: Sequence[Mapping[str, Any]], dest: Path) -> Path:
    """Bland–Altman plot of lesion volume: predicted − reference vs their mean (mL).

    Draws the mean difference (bias) and the limits of agreement bias ± 1.96 sd.
    """
    from matplotlib.figure import Figure

    pred, ref = _pairs(rows, "pred_volume_ml", "ref_volume_ml")
    mean = (pred + ref) / 2.0
    diff = pred - ref
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.scatter(mean, diff, s=18, alpha=0.8)
    if diff.size:
        bias = float(diff.mean())
        sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        ax.axhline(bias, color="C1", label=f"mean difference {bias:.2f} mL")
        for sign in (-1.0, 1.0):
            ax.axhline(bias + sign * 1.96 * sd, color="C2", linestyle="--")
        ax.plot([], [], color="C2", linestyle="--", label=f"±1.96 sd ({1.96 * sd:.2f} mL)")
        ax.legend(fontsize=8)
    ax.set_xlabel("mean of predicted and reference lesion volume (mL)")
    ax.set_ylabel("predicted − reference (mL)")
    ax.set_title(f"Bland–Altman, lesion volume (n = {diff.size})")
    ax.grid(alpha=0.3)
    return _save(fig, dest)


def plot_confusion(
    confusion: Mapping[str, Any], dest: Path, reference: str = "reference grade"
) -> Path:
    """Heat map of the CT-grade confusion matrix with counts in each cell; ``reference``
    names its rows (the reference mask's grade, or the MosMed category)."""
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion["matrix"])
    labels = list(confusion["labels"])
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted grade")
    ax.set_ylabel(reference)
    acc = confusion.get("accuracy", math.nan)
    ax.set_title(f"CT grade (accuracy {acc:.2f}, n = {confusion.get('n', 0)})")
    top = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    return _save(fig, dest)
