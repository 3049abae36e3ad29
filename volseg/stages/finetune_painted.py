"""The finetune stage's painted source: CT-0 training scans with COVID-like lesions painted in.

``finetune.painted_fraction`` turns it on. Each healthy (CT-0) TRAIN scan gets one painted
copy per category of :data:`volseg.data.paint.PAINT_CATEGORIES`, painted on its native grid
by :func:`volseg.data.paint.paint_study` into the lung mask ``prepare`` recorded for it,
with a seed from the run seed, the study id and the category. The copies are written
under ``<run_dir>/finetune/painted/`` (NIfTI image, exact mask, lungs, then a JSON record
last, each atomically) and preprocessed by the run's :class:`volseg.recipe.Recipe` into a
cache beside them (:func:`volseg.data.cache.build_cache`), exactly as a dataset scan is.
A resumed or repeated run finds the record matching its seed and source files and reuses
the copy, so the crops stay bit-exact. Validation and test scans are never painted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data.mosmed import Datalist, Study
from volseg.errors import InputError
from volseg.recipe import Recipe

log = logging.getLogger(__name__)

PAINTED_DIR = "painted"
PAINT_FORMAT = 1
"""Bump when painting changes, so that older copies are painted again."""


def painted_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/finetune/painted``: the painted copies and their cache."""
    return Path(run_dir) / "finetune" / PAINTED_DIR


def paint_seed(seed: int, study_id: str, category: str) -> int:
    """A seed of the run seed, the study and the category (stable across processes)."""
    text = f"{seed}:{study_id}:{category}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def healthy_to_paint(datalist: Datalist) -> list[Study]:
    """The scans painted into: unlabeled CT-0 scans of the TRAIN split, never val or test."""
    return [s for s in datalist.healthy("train") if not s.labeled]


def painted_study(source: Study, category: str, folder: Path) -> Study:
    """The painted copy's record: its files under ``folder`` (they may not exist yet)."""
    from volseg.data import layout

    pid = f"{source.id}_paint{category.lower().replace('-', '')}"
    return Study(
        id=pid,
        category=category,
        image=folder / f"{pid}.nii.gz",
        mask=layout.mask_path(folder, pid),
        lungs=layout.lungs_path(folder, pid),
    )


def _record(source: Study, category: str, seed: int) -> dict[str, Any]:
    """What a painted copy was made from: compared on reuse."""
    from volseg.utils import file_fingerprint

    files = {"image": source.image, "lungs": source.lungs}
    return {
        "format": PAINT_FORMAT,
        "source_id": source.id,
        "category": category,
        "seed": seed,
        "sources": {k: file_fingerprint(p) for k, p in files.items()},
    }


def _record_path(study: Study) -> Path:
    return study.image.with_name(f"{study.id}.json")


def _up_to_date(study: Study, record: dict[str, Any]) -> bool:
    """True when the copy's files exist and were made from ``record`` (written last)."""
    path = _record_path(study)
    if not path.is_file() or not all(p.is_file() for p in (study.image, study.mask, study.lungs)):
        return False
    try:
        return json.loads(path.read_text()).get("made_from") == record
    except (OSError, ValueError):
        return False


def paint_copy(source: Study, category: str, seed: int, folder: Path) -> Study:
    """Paint ``category`` lesions into ``source`` (native grid) unless an identical copy
    exists; returns the copy's record, files written."""
    from volseg.data.paint import paint_study
    from volseg.io import read_nifti, write_json_atomic, write_nifti

    study = painted_study(source, category, folder)
    record = _record(source, category, seed)
    if _up_to_date(study, record):
        return study
    hu, affine = read_nifti(source.image)
    lungs = None if source.lungs is None else read_nifti(source.lungs)[0]
    try:
        painted = paint_study(hu, affine, category, seed, lungs=lungs)
    except ValueError as exc:
        raise InputError(f"{source.image}: cannot paint {category} ({exc})") from None
    write_nifti(study.image, painted.image, affine)
    write_nifti(study.mask, painted.lesion, affine, dtype=np.uint8)
    write_nifti(study.lungs, painted.lungs, affine, dtype=np.uint8)
    made = {"made_from": record, "involvement_pct": painted.involvement_pct}
    write_json_atomic(_record_path(study), made)
    log.debug("%s: %s painted, %.1f %% of the lungs", study.id, category, painted.involvement_pct)
    return study


def painted_sources(cfg: Any, prepared: Any) -> list[Any]:
    """Patch sources of the painted copies of the CT-0 TRAIN scans, on the cache grid.

    Empty when ``finetune.painted_fraction`` is unset or there is no such scan.
    """
    from volseg.data.cache import build_cache
    from volseg.data.paint import PAINT_CATEGORIES
    from volseg.data.patches import PatchSource

    if cfg.finetune.painted_fraction is None:
        return []
    folder = painted_dir(cfg.run_dir)
    copies = [
        paint_copy(source, category, paint_seed(cfg.seed, source.id, category), folder)
        for source in healthy_to_paint(prepared.datalist)
        for category in PAINT_CATEGORIES
    ]
    if not copies:
        log.warning("finetune.painted_fraction is set but no CT-0 training scan to paint into")
        return []
    volumes = build_cache(copies, Recipe.from_config(cfg), None, folder / "cache")
    n_scans = len(copies) // len(PAINT_CATEGORIES)
    log.info("painted: %d copies of %d healthy training scans", len(copies), n_scans)
    return [PatchSource.from_cached(volumes[s.id], weight=1.0) for s in copies]
