"""Statistics over cases: mean ± sd, median, bootstrap CIs, burden strata, grade confusion.

NaN values (undefined metrics, see :mod:`volseg.evaluation.metrics`) are excluded from every
statistic and counted in ``n_missing``. The bootstrap is the percentile method on the mean
over cases, seeded so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

N_GRADES = 5


def _finite(values: Sequence[Any]) -> np.ndarray:
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval of the mean (NaN values dropped).

    Resamples cases with replacement ``n_resamples`` times with a generator seeded by
    ``seed``. Returns None when it cannot be estimated (no resamples or fewer than 2 values).
    """
    data = _finite(list(values))
    if n_resamples <= 0 or data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_resamples, data.size))
    means = data[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def describe(values: Sequence[Any], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``n``, ``n_missing``, ``mean``, ``sd`` (ddof 1), ``median``, ``min``, ``max``, ``ci95``."""
    data = _finite(list(values))
    n = int(data.size)
    out: dict[str, Any] = {
        "n": n,
        "n_missing": len(values) - n,
        "mean": float(data.mean()) if n else math.nan,
        "sd": float(data.std(ddof=1)) if n > 1 else math.nan,
        "median": float(np.median(data)) if n else math.nan,
        "min": float(data.min()) if n else math.nan,
        "max": float(data.max()) if n else math.nan,
        "ci95": None,
    }
    ci = bootstrap_ci(data, n_resamples, seed)
    if ci is not None:
        out["ci95"] = [ci[0], ci[1]]
    return out


def summarize(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """:func:`describe` for each metric over the case rows (same seed for each metric)."""
    return {m: describe([r.get(m) for r in rows], n_resamples, seed) for m in metrics}


def bin_label(lo: float, hi: float, last: bool) -> str:
    """``[5, 25)``-style label; the last bin is closed on the right."""
    return f"[{lo:g}, {hi:g}{']' if last else ')'}"


def stratify(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    bins: Sequence[float],
    key: str = "ref_involvement_pct",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Summaries of ``metrics`` per bin of ``key`` (reference involvement % by default).

    Bins are half-open ``[lo, hi)`` except the last, ``[lo, hi]``. Cases whose ``key`` is
    missing or outside every bin are not placed in any bin.
    """
    edges = [float(b) for b in bins]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise ValueError(f"involvement bins must be at least two increasing edges, got {bins}")
    strata = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = i == len(edges) - 2
        members = []
        for r in rows:
            v = r.get(key)
            if v is None or not math.isfinite(float(v)):
                continue
            if lo <= v < hi or (last and v == hi):
                members.append(r)
        strata.append(
            {
                "bin": bin_label(lo, hi, last),
                "low": lo,
                "high": hi,
                "n_cases": len(members),
                "cases": [str(r.get("case_id")) for r in members],
                "metrics": summarize(members, metrics, n_resamples, seed),
            }
        )
    return strata


def grade_confusion(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """5×5 CT-grade confusion matrix (rows reference grade, columns predicted) and accuracy.

    Only cases with both grades (i.e. with a lung mask) count. ``within_one_accuracy`` counts
    predictions at most one grade away.
    """
    matrix = np.zeros((N_GRADES, N_GRADES), dtype=np.int64)
    for r in rows:
        g_ref, g_pred = r.get("ref_grade"), r.get("pred_grade")
        if g_ref is None or g_pred is None:
            continue
        matrix[int(g_ref), int(g_pred)] += 1
    n = int(matrix.sum())
    diag = int(np.trace(matrix))
    near = int(
        sum(matrix[i, j] for i in range(N_GRADES) for j in range(N_GRADES) if abs(i - j) <= 1)
    )
    return {
        "labels": [f"CT-{g}" for g in range(N_GRADES)],
        "matrix": matrix.tolist(),
        "n": n,
        "accuracy": diag / n if n else math.nan,
        "within_one_accuracy": near / n if n else math.nan,
    }
