"""The prepare stage: datalist with patient-level splits, lung masks, preprocessing cache.

Writes, under ``run_dir``::

    prepare/datalist.json      studies, their files and their split
    prepare/lungs/<id>_lungs.nii.gz   (data.lungs = "compute"), with <id>_lungs.json:
                               the image and lung settings it was made from
    cache/<settings_hash>/...  preprocessed train/val studies (see volseg.data.cache)
    config.yaml                the resolved config

Before anything is written the whole dataset passes the checks of ``volseg check-data``
(:func:`volseg.data.check.check_dataset`: readable 3D NIfTI with a usable grid, CT in
Hounsfield units, masks on their image's grid with values 0/1); any problem refuses the
run, naming the first file. Work already done is skipped: a lung mask is kept while its
image and the lung settings are unchanged, a cache entry while its sources and the
preprocessing are. The per-study work (check, lung masks, cache) runs in
``data.prepare_workers`` processes (:mod:`volseg.data.workers`: unset, one per core as far
as memory allows), with the same results as in one process. A run that fails on a bad
input or an OS error (disk full) removes the files it wrote, never those that were there
before. Test studies are not cached, so no training stage can read them from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from volseg.config import Config, save_resolved
from volseg.data import layout
from volseg.data.mosmed import SPLITS, Datalist, Study
from volseg.data.workers import map_ordered, study_peak_bytes, worker_count, workers_for
from volseg.errors import InputError, VolsegError
from volseg.io import cleanup_on_error, write_json_atomic
from volseg.progress import progress
from volseg.rundir import CACHE_DIR, DATALIST, LUNGS_DIR, PREPARE_DIR, datalist_path  # noqa: F401

log = logging.getLogger(__name__)


LUNGS_RECORD_SUFFIX = "_lungs.json"
"""Beside each computed lung mask: the image it was made from and the lung settings, so a
changed image (or new settings) gets a new mask and an unchanged one is kept."""


def _lungs_record(study: Study) -> dict[str, Any]:
    from volseg.data.lung_params import LungParams
    from volseg.utils import file_fingerprint

    return {"image": file_fingerprint(study.image), "params": dataclasses.asdict(LungParams())}


def _lungs_current(study: Study, dst: Path) -> bool:
    """True if ``dst`` was computed from this very image with today's lung settings."""
    record = dst.with_name(f"{study.id}{LUNGS_RECORD_SUFFIX}")
    if not dst.is_file() or not record.is_file():
        return False
    try:
        return json.loads(record.read_text()) == json.loads(json.dumps(_lungs_record(study)))
    except (OSError, ValueError):
        return False


def _lungs_task(task: tuple[Study, Path]) -> None:
    """One study's lung mask, then its record (a mask without a record is redone)."""
    from volseg.data import lung_files

    study, dst = task
    lung_files.segment_lungs_file(study.image, dst)
    write_json_atomic(dst.with_name(f"{study.id}{LUNGS_RECORD_SUFFIX}"), _lungs_record(study))


def compute_lungs(
    studies: list[Study], folder: Path, workers: int | None = None
) -> dict[str, Path]:
    """Lung masks for ``studies`` into ``folder``: only those whose image is new or changed.

    ``workers``: processes (``data.prepare_workers``; None: as cores and memory allow).
    """
    out: dict[str, Path] = {}
    todo = []
    for study in studies:
        dst = layout.lungs_path(folder, study.id)
        out[study.id] = dst
        if not _lungs_current(study, dst):
            todo.append((study, dst))
    log.info("lung masks: %d up to date, %d to compute", len(studies) - len(todo), len(todo))
    count = workers_for(workers, [s.image for s, _ in todo])
    for _ in progress(map_ordered(_lungs_task, todo, count), desc="lungs", unit="study"):
        pass
    return out


def dataset_lungs(studies: list[Study]) -> dict[str, Path]:
    """The dataset's own lung masks (``lungs/``); every study must have one."""
    missing = [s.id for s in studies if s.lungs is None]
    if missing:
        raise InputError(
            f"data.lungs is 'dataset' but {len(missing)} studies have no "
            f"{layout.LUNGS_DIR}/<id>_lungs.nii.gz (first: {missing[0]}); "
            "use data.lungs=compute"
        )
    return {s.id: s.lungs for s in studies if s.lungs is not None}


_CLEAN: set[tuple[str, str]] = set()
"""Datasets (path, listing hash) found clean in this process, so ``volseg run``'s check
before any stage and ``prepare``'s own check read the files once."""


def check_dataset_clean(
    root: str | Path, prune: tuple[Path, ...] = (), workers: int | None = None
) -> None:
    """Refuse a dataset in which ``volseg check-data`` finds any problem (one line).

    ``workers``: processes decoding the images (None: as cores and memory allow).
    """
    from volseg.data.check import check_dataset
    from volseg.utils import listing_fingerprint

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found (data.root)")
    key = (str(root.resolve()), listing_fingerprint(root, prune=prune)["hash"])
    if key in _CLEAN:
        return
    count = worker_count(workers, None, study_peak_bytes(0))
    problems = check_dataset(
        root, progress=lambda files: progress(files, desc="check", unit="file"), workers=count
    )
    if problems:
        more = len(problems) - 1
        tail = (
            f" (and {more} more problem{'s' * (more != 1)}: `volseg check-data {root}` lists them)"
            if more
            else ""
        )
        raise InputError(f"{problems[0]}{tail}")
    _CLEAN.add(key)


def check_prepare(cfg: Config) -> Datalist:
    """Everything ``prepare`` reads, checked without writing: returns the datalist."""
    data = cfg.data
    if Path(cfg.run_dir).exists() and not Path(cfg.run_dir).is_dir():
        raise InputError(f"{cfg.run_dir}: exists and is not a folder (run_dir)")
    check_dataset_clean(data.root, prune=(Path(cfg.run_dir),), workers=data.prepare_workers)
    split = data.split
    datalist = Datalist.build(data.root, split.val_fraction, split.test_fraction, split.seed)
    if data.lungs == "dataset":
        dataset_lungs(list(datalist.studies.values()))
    return datalist


def log_summary(datalist: Datalist) -> None:
    """One line per split × category: labeled / unlabeled counts."""
    for split, table in datalist.summary().items():
        total = sum(r["labeled"] + r["unlabeled"] for r in table.values())
        cells = ", ".join(f"{cat} {r['labeled']}L/{r['unlabeled']}U" for cat, r in table.items())
        log.info("%-5s %4d studies: %s", split, total, cells or "-")


def run_prepare(cfg: Config) -> Path:
    """Discover, split, make lung masks, build the cache; returns ``<run_dir>/prepare``."""
    data = cfg.data
    out_dir = Path(cfg.run_dir) / PREPARE_DIR
    datalist = check_prepare(cfg)
    studies = [datalist.studies[i] for i in sorted(datalist.studies)]
    cache_root = Path(cfg.run_dir) / CACHE_DIR
    failures = (VolsegError, OSError)
    with (
        cleanup_on_error(cfg.run_dir, errors=failures),
        cleanup_on_error(out_dir, cache_root, remove_files=True, errors=failures),
    ):
        if data.lungs == "dataset":
            lungs = dataset_lungs(studies)
        else:
            lungs = compute_lungs(studies, out_dir / LUNGS_DIR, data.prepare_workers)
        datalist = datalist.with_lungs(lungs)

        if data.cache:
            from volseg.data.cache import build_cache, settings_hash
            from volseg.recipe import Recipe

            # Test studies never enter the cache the training stages read from.
            usable = datalist.studies_in(("train", "val"))
            recipe = Recipe.from_config(cfg)
            build_cache(usable, recipe, None, cache_root, data.prepare_workers)
            cache_folder = cache_root / settings_hash(recipe)
            datalist = dataclasses.replace(datalist, cache_dir=cache_folder)

        datalist.save(out_dir / DATALIST)
        save_resolved(cfg)
    log_summary(datalist)
    log.info(
        "prepare: %s (%s)",
        out_dir / DATALIST,
        ", ".join(f"{n} {len(datalist.splits[n])}" for n in SPLITS),
    )
    return out_dir
