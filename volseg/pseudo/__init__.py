"""Pseudo-masks from a healthy-lung generator: residual maps, threshold choice, quality control.

The GAN stage (:mod:`volseg.stages.gan`) restores each unlabeled COVID scan with a generator
trained to make lungs look healthy; what it removed (``input - G(input)``, inside the lungs)
marks the lesions. This package holds the numerical steps, free of training code:

* :mod:`volseg.pseudo.residual` — whole-volume restoration (sliding window), the smoothed
  in-lung residual and its soft map;
* :mod:`volseg.pseudo.threshold` — binarisation, threshold calibration against true masks or
  from healthy scans;
* :mod:`volseg.pseudo.qc` — the per-scan QC table that decides which pseudo-masks fine-tuning
  may use.
"""

from __future__ import annotations

from volseg.pseudo.qc import (
    QC_COLUMNS,
    QcRow,
    check_pseudo,
    make_row,
    passed_ids,
    read_qc,
    write_qc,
)
from volseg.pseudo.threshold import (
    Calibration,
    binarize,
    calibrate_threshold,
    candidate_thresholds,
    dice,
    healthy_threshold,
)

__all__ = [
    "QC_COLUMNS",
    "Calibration",
    "QcRow",
    "binarize",
    "calibrate_threshold",
    "candidate_thresholds",
    "check_pseudo",
    "dice",
    "healthy_threshold",
    "make_row",
    "passed_ids",
    "read_qc",
    "write_qc",
]
