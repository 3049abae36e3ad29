"""The finetune stage's patch sources besides the labeled scans: QC-passed GAN
pseudo-masks and healthy (CT-0) scans as lesion-free examples, and the healthy scans the
lesion-presence gate is calibrated on. Their shares of the crops: :mod:`volseg.data.sampling`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from volseg.data import layout
from volseg.data.mosmed import Study
from volseg.errors import InputError
from volseg.pseudo.qc import passed_ids
from volseg.recipe import Recipe
from volseg.rundir import pseudo_dir, qc_path

log = logging.getLogger(__name__)


def pseudo_sources(cfg: Any, prepared: Any) -> list[Any]:
    """Patch sources of the QC-passed pseudo-masks of unlabeled TRAIN scans, on the cache grid.

    Empty when pseudo-masks are switched off, the GAN is disabled or its QC table is absent.
    """
    from volseg.data.patches import PatchSource

    ft = cfg.finetune
    recipe = Recipe.from_config(cfg)
    table = qc_path(cfg.run_dir)
    if not ft.use_pseudo:
        return []
    if not cfg.gan.enabled:
        log.info("gan is disabled: no pseudo-masks")
        return []
    if not table.is_file():
        log.warning("%s not found (gan not run?): training without pseudo-masks", table)
        return []
    dl = prepared.datalist
    sources = []
    for sid in passed_ids(table):
        if sid not in dl.studies:
            raise InputError(f"{table}: study {sid} is not in this run's datalist")
        study = dl.studies[sid]
        if dl.split_of(sid) != "train" or study.labeled or study.healthy:
            log.debug("pseudo-mask of %s not used (split %s)", sid, dl.split_of(sid))
            continue
        vol = prepared.volumes.get(sid)
        if vol is None:
            raise InputError(f"{sid}: no cache entry (re-run 'volseg prepare')")
        mask_file = layout.pseudo_path(pseudo_dir(cfg.run_dir), sid)
        if not mask_file.is_file():
            raise InputError(f"{mask_file}: pseudo-mask listed as passed in {table} is missing")
        mask = vol.mask_from_source(mask_file, recipe)
        sources.append(PatchSource.from_cached(vol, label=mask, weight=ft.pseudo_weight))
    log.info("pseudo-masks: %d QC-passed training scans", len(sources))
    return sources


def healthy_sources(cfg: Any, prepared: Any) -> list[Any]:
    """Patch sources of the unlabeled CT-0 TRAIN scans with an all-zero (true) mask.

    The mask is a zero-strided view (no memory per scan). Empty when
    ``finetune.use_healthy`` is off.
    """
    from volseg.data.patches import PatchSource

    if not cfg.finetune.use_healthy:
        return []
    sources = []
    for study in prepared.datalist.healthy("train"):
        if study.labeled:
            continue  # its own mask is already among the labeled scans' candidates
        vol = prepared.volumes.get(study.id)
        if vol is None:
            raise InputError(f"{study.id}: no cache entry (re-run 'volseg prepare')")
        empty = np.broadcast_to(np.uint8(0), tuple(vol.shape))
        sources.append(PatchSource.from_cached(vol, label=empty, weight=1.0))
    log.info("healthy (CT-0) scans as lesion-free examples: %d", len(sources))
    return sources


# ----------------------------------------------------------------------------- stage


def gate_healthy_studies(cfg: Any, datalist: Any) -> list[Study]:
    """The healthy scans the gate is calibrated on: CT-0 validation scans, plus the CT-0
    training scans when fine-tuning did not train on them (``use_healthy`` off and no
    ``painted_fraction``: painted copies are those scans' anatomy). Every one is a scan the
    network never learned from, with an empty reference by definition; never a test scan."""
    trained_on = cfg.finetune.use_healthy or cfg.finetune.painted_fraction is not None
    splits = ("val",) if trained_on else ("val", "train")
    return [s for s in datalist.healthy(splits) if not s.labeled]
