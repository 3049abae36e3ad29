"""What the model bundle records about the training scans, for predict's
out-of-distribution check (:mod:`volseg.inference.ood`).

Spacing comes from every training-split scan's native grid (recorded in the cache, no file
read); lung HU percentiles from the native image inside the lung mask ``prepare`` made, on
at most :data:`MAX_HU_SCANS` training scans spread evenly over the sorted ids (each costs
one decode of the image and its mask: about 0.5 s for a MosMed-size study). Validation and
test scans are never measured.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from volseg.inference.ood import grid_spacing, lung_hu_percentiles, training_stats
from volseg.io import read_nifti
from volseg.utils import evenly_spaced

log = logging.getLogger(__name__)

MAX_HU_SCANS = 64


def training_scan_stats(prepared: Any, hu_window: Any) -> dict[str, Any] | None:
    """The bundle's ``training_stats`` from a run's prepared data; None without training
    scans in the cache."""
    studies = prepared.datalist.studies_in("train")
    volumes = prepared.volumes_of(studies)
    if not volumes:
        return None
    spacings = [grid_spacing(v.source_affine) for v in volumes]
    with_lungs = [s for s in studies if s.lungs is not None]
    lung_hu = []
    for study in evenly_spaced(with_lungs, MAX_HU_SCANS):
        image, _ = read_nifti(study.image, dtype=np.float32)
        lungs, _ = read_nifti(study.lungs)
        values = lung_hu_percentiles(image, lungs, hu_window)
        if values is not None:
            lung_hu.append(values)
    stats = training_stats(spacings, lung_hu, hu_window)
    lung = stats["lung_hu_percentiles"]
    log.info(
        "finetune: training scans for the out-of-distribution check: %d scans, in-plane "
        "%s mm, slices %s mm, lung HU median %s over %d scans",
        stats["n_scans"],
        "–".join(f"{v:g}" for v in stats["in_plane_mm"]),
        "–".join(f"{v:g}" for v in stats["slice_mm"]),
        "n/a" if lung is None else f"{lung['50']['mean']:.0f} ± {lung['50']['sd']:.0f}",
        stats["lung_hu_scans"],
    )
    return stats
