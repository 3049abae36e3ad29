"""Validation and the lesion-presence gate, measured exactly as ``predict`` + ``evaluate``.

Each scan is segmented by the one :class:`volseg.inference.predictor.Predictor` on its own
native grid (the model bundle's recipe, the ``predict`` settings, no gate), and compared
with its native reference mask by :func:`volseg.evaluation.metrics.overlap_metrics`, the
function ``evaluate`` uses. Dice is over the WHOLE volume, never per patch or slice; so the
validation Dice of a scan is the Dice ``volseg predict`` + ``volseg evaluate`` report for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volseg.errors import InputError
from volseg.evaluation.metrics import overlap_metrics
from volseg.inference.predictor import Predictor
from volseg.utils import same_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanCase:
    """A native scan to validate on: its files (read when used, so many cases cost no memory)."""

    id: str
    image: Path
    lungs: Path | None
    reference: Path | None
    """None with ``empty_reference``: a healthy (CT-0) scan, whose reference is empty."""
    empty_reference: bool = False

    @classmethod
    def of(cls, study: object, empty_reference: bool = False) -> ScanCase:
        """A :class:`volseg.data.mosmed.Study` (with its lung mask from ``prepare``)."""
        return cls(
            id=study.id,  # type: ignore[attr-defined]
            image=Path(study.image),  # type: ignore[attr-defined]
            lungs=None if study.lungs is None else Path(study.lungs),  # type: ignore[attr-defined]
            reference=None if empty_reference else study.mask,  # type: ignore[attr-defined]
            empty_reference=empty_reference,
        )

    def read_scan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(image HU, affine, lungs or None)`` on the native grid."""
        from volseg.io import read_nifti

        image, affine = read_nifti(self.image, dtype=np.float32)
        return image, affine, self._mask(self.lungs, image.shape, affine)

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """``(image HU, affine, lungs or None, reference)`` on the native grid."""
        image, affine, lungs = self.read_scan()
        if self.empty_reference:
            ref = np.zeros(image.shape, dtype=bool)
        else:
            ref = self._mask(self.reference, image.shape, affine)
            if ref is None:
                raise InputError(f"{self.id}: no reference mask to validate against")
        return image, affine, lungs, ref

    def _mask(self, path: Path | None, shape: tuple, affine: np.ndarray) -> np.ndarray | None:
        from volseg.io import read_nifti

        if path is None:
            return None
        mask, m_affine = read_nifti(path)
        if not same_grid(mask.shape, m_affine, shape, affine):
            raise InputError(f"{path}: grid differs from {self.image}")
        return np.asarray(mask) > 0


@dataclass
class ValidationResult:
    """Per-case metrics and their means over cases (NaN values left out of the means)."""

    cases: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.cases)

    def means(self, prefix: str = "val_") -> dict[str, float]:
        """``{prefix + metric: mean over cases}``; NaN when no case defines it."""
        out: dict[str, float] = {}
        names = sorted({k for case in self.cases.values() for k in case})
        for name in names:
            values = [c[name] for c in self.cases.values() if not math.isnan(c.get(name, math.nan))]
            out[prefix + name] = float(np.mean(values)) if values else math.nan
        return out


def _segmented(
    predictor: Predictor, cases: Iterable[ScanCase], with_reference: bool = True
) -> Iterator[tuple[ScanCase, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """``(case, ungated predicted mask, lungs it is measured in, reference)`` for each case,
    one at a time; the lungs are the lung mask plus the lesion, as ``predict`` reports them.
    Without ``with_reference`` (scans without a mask) the reference is None and never read."""
    ungated = predictor.with_options(predictor.options.ungated())
    for case in cases:
        if with_reference:
            image, affine, lungs, ref = case.read()
        else:
            (image, affine, lungs), ref = case.read_scan(), None
        result = ungated.predict(image, affine, lungs)
        yield case, result.mask > 0, result.lungs, ref


def _involvement_pct(case: ScanCase, pred: np.ndarray, lungs: np.ndarray | None) -> float:
    """Predicted lesion voxels as a share of the lung voxels (%); the gate needs lungs."""
    if lungs is None:
        raise InputError(f"{case.id}: the gate needs a lung mask")
    return 100.0 * float(pred.sum()) / max(int(np.count_nonzero(lungs)), 1)


def validate(predictor: Predictor, cases: Sequence[ScanCase]) -> ValidationResult:
    """Whole-volume Dice, sensitivity and precision on native labeled scans (no gate)."""
    result = ValidationResult()
    for case, pred, _, ref in _segmented(predictor, cases):
        m = overlap_metrics(pred, ref)
        result.cases[case.id] = {k: m[k] for k in ("dice", "sensitivity", "precision")}
        log.debug("val %s: dice %.4f", case.id, m["dice"])
    return result


# --------------------------------------------------------------------- lesion-presence gate


@dataclass(frozen=True)
class GateCase:
    """One validation scan as the lesion-presence gate sees it."""

    id: str
    involvement_pct: float
    """Predicted lesion voxels as a share of the lung voxels (%)."""
    dice: float
    """Dice of the ungated prediction against the reference."""
    empty_reference: bool
    """True for a healthy (CT-0) scan: its reference mask is empty by definition."""

    def gated_dice(self, gate_pct: float) -> float:
        """Dice once scans predicted below ``gate_pct`` are called lesion-free (empty mask)."""
        if self.involvement_pct >= gate_pct:
            return self.dice
        return 1.0 if self.empty_reference else 0.0


def gate_cases(predictor: Predictor, cases: Sequence[ScanCase]) -> list[GateCase]:
    """Predicted involvement and Dice of labeled and healthy (empty-reference) scans, as
    ``predict`` measures them before its gate; a scan without a lung mask is refused."""
    out = []
    for case, pred, lungs, ref in _segmented(predictor, cases):
        involvement = _involvement_pct(case, pred, lungs)
        dice = overlap_metrics(pred, ref)["dice"]
        out.append(GateCase(case.id, involvement, float(dice), case.empty_reference))
    return out


def unlabeled_involvements(predictor: Predictor, cases: Sequence[ScanCase]) -> dict[str, float]:
    """Predicted involvement (%) before the gate of scans without a mask, as
    :func:`gate_cases` measures it: for validation scans whose category says they hold
    lesions, which a gate above their involvement would call lesion-free."""
    segmented = _segmented(predictor, cases, with_reference=False)
    return {case.id: _involvement_pct(case, pred, lungs) for case, pred, lungs, _ in segmented}


def choose_involvement_gate(cases: Sequence[GateCase]) -> float:
    """The predicted-involvement gate (%) that maximises the mean gated Dice of ``cases``.

    Candidates are 0 (no gate) and the midpoints between consecutive distinct predicted
    involvements (geometric, so the gate sits as far in ratio from the scan below as from
    the one above); ties go to the smallest gate, which calls the fewest scans lesion-free.
    When the healthy scans are all predicted below the labeled ones, the result is the
    midpoint between the highest healthy and the lowest labeled scan.
    """
    if not cases:
        return 0.0
    values = sorted({c.involvement_pct for c in cases})
    candidates = [0.0]
    for low, high in zip(values, values[1:], strict=False):
        candidates.append(math.sqrt(low * high) if low > 0 else high / 2.0)

    def score(gate: float) -> float:
        return float(np.mean([c.gated_dice(gate) for c in cases]))

    best = max(score(g) for g in candidates)
    return min(g for g in candidates if score(g) >= best - 1e-12)
