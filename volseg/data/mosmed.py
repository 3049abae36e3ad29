"""MosMed-layout dataset → datalist with patient-level, stratified train/val/test splits.

:func:`discover` walks ``studies/CT-0..CT-4`` and pairs each study with its mask (and, for
synthetic data, its true lungs and full ground truth). :func:`split_studies` assigns every
study to exactly one split, stratified by (category, labeled) so that labeled scans reach
val and test, where Dice is measured. :class:`Datalist` bundles both, is saved as
``datalist.json`` and offers the selections the stages need; test studies are only ever
returned by explicitly asking for ``"test"``, so they cannot leak into training,
pretraining or pseudo-labelling by accident.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data import layout
from volseg.errors import InputError
from volseg.io import NIFTI_SUFFIXES, write_json_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DATALIST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Study:
    """One CT study: its id, MosMed category and the files that belong to it."""

    id: str
    category: str
    image: Path
    mask: Path | None = None
    lungs: Path | None = None
    """Lung mask: the dataset's own (synthetic data) or the one ``prepare`` computed."""
    truth: Path | None = None
    """Full lesion ground truth (synthetic data only); for evaluation, never for training."""

    @property
    def labeled(self) -> bool:
        return self.mask is not None

    @property
    def healthy(self) -> bool:
        return self.category == "CT-0"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "image": str(self.image),
            "mask": str(self.mask) if self.mask else None,
            "lungs": str(self.lungs) if self.lungs else None,
            "truth": str(self.truth) if self.truth else None,
            "labeled": self.labeled,
            "healthy": self.healthy,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Study:
        def opt(key: str) -> Path | None:
            return Path(obj[key]) if obj.get(key) else None

        return cls(
            id=str(obj["id"]),
            category=str(obj["category"]),
            image=Path(obj["image"]),
            mask=opt("mask"),
            lungs=opt("lungs"),
            truth=opt("truth"),
        )


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def discover(root: str | Path) -> list[Study]:
    """All studies under a MosMed-layout ``root``, sorted by id.

    Raises :class:`InputError` naming the folder when ``root`` or ``root/studies`` is
    missing or holds no study, when one id appears in two categories, or when a mask (or
    truth file) has no matching study.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    studies_dir = root / layout.STUDIES_DIR
    if not studies_dir.is_dir():
        raise InputError(
            f"{studies_dir}: folder not found (expected the MosMed layout "
            f"{layout.STUDIES_DIR}/CT-0..CT-4/study_XXXX.nii.gz)"
        )
    extra = sorted(
        p.name for p in studies_dir.iterdir() if p.is_dir() and p.name not in layout.CATEGORIES
    )
    if extra:
        log.warning("%s: ignoring folders that are not categories: %s", studies_dir, extra)

    images: dict[str, tuple[str, Path]] = {}
    for category in layout.CATEGORIES:
        for path in _nifti_files(studies_dir / category):
            sid = layout.study_id(path)
            if sid in images:
                raise InputError(
                    f"{path}: study {sid} also appears as {images[sid][1]} (one id per study)"
                )
            images[sid] = (category, path)
    if not images:
        raise InputError(f"{studies_dir}: no studies found (expected CT-0..CT-4/*.nii.gz)")

    masks = _paired(root / layout.MASKS_DIR, images, "mask")
    truths = _paired(root / layout.TRUTH_DIR, images, "truth file")
    lungs = _paired(root / layout.LUNGS_DIR, images, "lung mask")
    studies = [
        Study(
            id=sid,
            category=category,
            image=path,
            mask=masks.get(sid),
            lungs=lungs.get(sid),
            truth=truths.get(sid),
        )
        for sid, (category, path) in sorted(images.items())
    ]
    log.info("%s: %d studies (%d labeled)", root, len(studies), sum(s.labeled for s in studies))
    return studies


def _paired(folder: Path, images: dict[str, Any], what: str) -> dict[str, Path]:
    """Files of an optional per-study folder, keyed by study id; orphans are errors."""
    found: dict[str, Path] = {}
    for path in _nifti_files(folder):
        sid = layout.study_id(path)
        if sid not in images:
            raise InputError(f"{path}: {what} without a study (no {sid} under studies/)")
        found[sid] = path
    return found


# --------------------------------------------------------------------------- splits


def _cumulative_counts(sizes: Sequence[int], fraction: float) -> list[int]:
    """Per-stratum counts whose running total tracks ``fraction`` of the running size."""
    counts, total, given = [], 0, 0
    for n in sizes:
        total += n
        target = min(int(np.floor(total * fraction + 0.5)), total)
        k = int(np.clip(target - given, 0, n))
        counts.append(k)
        given += k
    return counts


def split_studies(
    studies: Sequence[Study], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Patient-level split into ``train``/``val``/``test`` lists of study ids (sorted).

    Stratified by (category, labeled): each stratum is shuffled with ``seed`` and cut so that
    the overall val/test shares track the fractions. With at least three labeled studies,
    val and test (when their fraction is non-zero) each receive at least one labeled study
    and train keeps at least one.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must be below 1")
    ids = [s.id for s in studies]
    if len(set(ids)) != len(ids):
        dup = [k for k, c in Counter(ids).items() if c > 1]
        raise InputError(f"duplicate study ids: {dup[:5]}")

    strata: dict[tuple[str, bool], list[str]] = {}
    for s in sorted(studies, key=lambda s: s.id):
        strata.setdefault((s.category, s.labeled), []).append(s.id)
    keys = sorted(strata)
    rng = np.random.default_rng(seed)
    for key in keys:
        order = rng.permutation(len(strata[key]))
        strata[key] = [strata[key][i] for i in order]

    sizes = [len(strata[k]) for k in keys]
    n_test = _cumulative_counts(sizes, test_fraction)
    # val is cut from what test leaves, at the share that makes it val_fraction overall
    rest = [n - t for n, t in zip(sizes, n_test, strict=True)]
    n_val = _cumulative_counts(rest, val_fraction / (1.0 - test_fraction))
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for key, t, v in zip(keys, n_test, n_val, strict=True):
        members = strata[key]
        splits["test"] += members[:t]
        splits["val"] += members[t : t + v]
        splits["train"] += members[t + v :]

    labeled = {s.id for s in studies if s.labeled}
    category = {s.id: s.category for s in studies}
    if len(labeled) >= 3:
        for target, fraction in (("test", test_fraction), ("val", val_fraction)):
            if fraction > 0 and not labeled.intersection(splits[target]):
                _move_labeled_into(splits, target, labeled, category)
    return {name: sorted(members) for name, members in splits.items()}


def _move_labeled_into(
    splits: dict[str, list[str]], target: str, labeled: set[str], category: dict[str, str]
) -> None:
    """Give ``target`` one labeled study from the split richest in them (a swap, if possible).

    The donor gives its last labeled study (in shuffled order); an unlabeled study of
    ``target`` — of the same category when there is one — goes back, keeping split sizes.
    """
    donors = [n for n in SPLITS if n != target]
    donor = max(donors, key=lambda n: (sum(i in labeled for i in splits[n]), n == "train"))
    moved = [i for i in splits[donor] if i in labeled][-1]
    splits[donor].remove(moved)
    splits[target].append(moved)
    unlabeled = [i for i in splits[target] if i not in labeled]
    if unlabeled:
        same = [i for i in unlabeled if category[i] == category[moved]]
        back = (same or unlabeled)[-1]
        splits[target].remove(back)
        splits[donor].append(back)


# --------------------------------------------------------------------------- datalist


@dataclasses.dataclass
class Datalist:
    """Studies plus their split; the one record of which scan may be used where."""

    root: Path
    studies: dict[str, Study]
    splits: dict[str, list[str]]
    seed: int = 0
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    cache_dir: Path | None = None
    """Folder of the preprocessing cache entries (set by ``prepare``)."""

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for name in SPLITS:
            for sid in self.splits.setdefault(name, []):
                if sid not in self.studies:
                    raise InputError(f"datalist: split {name!r} names unknown study {sid}")
                if sid in seen:
                    raise InputError(f"datalist: study {sid} is in both {seen[sid]} and {name}")
                seen[sid] = name
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise InputError(f"datalist: unknown splits {sorted(unknown)}")

    @classmethod
    def build(
        cls, root: str | Path, val_fraction: float, test_fraction: float, seed: int
    ) -> Datalist:
        """Discover ``root`` and split it."""
        studies = discover(root)
        splits = split_studies(studies, val_fraction, test_fraction, seed)
        return cls(
            root=Path(root),
            studies={s.id: s for s in studies},
            splits=splits,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        )

    # ---- selections
    def split_of(self, sid: str) -> str:
        for name in SPLITS:
            if sid in self.splits[name]:
                return name
        raise KeyError(sid)

    def studies_in(self, split: str | Iterable[str]) -> list[Study]:
        """Studies of one split or several (``("train", "val")``), sorted by id."""
        names = (split,) if isinstance(split, str) else tuple(split)
        for name in names:
            if name not in SPLITS:
                raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        ids = sorted(i for name in names for i in self.splits[name])
        return [self.studies[i] for i in ids]

    def train_studies(self) -> list[Study]:
        """The training split: the only scans training, pretraining and the GAN may see."""
        return self.studies_in("train")

    def labeled(self, split: str | Iterable[str]) -> list[Study]:
        return [s for s in self.studies_in(split) if s.labeled]

    def unlabeled(self, split: str | Iterable[str]) -> list[Study]:
        return [s for s in self.studies_in(split) if not s.labeled]

    def healthy(self, split: str | Iterable[str]) -> list[Study]:
        """CT-0 studies (no lesions): the GAN's examples of healthy lungs."""
        return [s for s in self.studies_in(split) if s.healthy]

    def covid_unlabeled(self, split: str | Iterable[str]) -> list[Study]:
        """CT-1..CT-4 studies without a mask: candidates for pseudo-masks."""
        return [s for s in self.studies_in(split) if not s.labeled and not s.healthy]

    def with_lungs(self, lungs: dict[str, Path]) -> Datalist:
        """A copy whose studies point at the given lung masks."""
        studies = {
            sid: dataclasses.replace(s, lungs=lungs.get(sid, s.lungs))
            for sid, s in self.studies.items()
        }
        return dataclasses.replace(self, studies=studies)

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        """Counts per split × category × labeled/unlabeled."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for name in SPLITS:
            table: dict[str, dict[str, int]] = {}
            for s in self.studies_in(name):
                row = table.setdefault(s.category, {"labeled": 0, "unlabeled": 0})
                row["labeled" if s.labeled else "unlabeled"] += 1
            out[name] = dict(sorted(table.items()))
        return out

    # ---- persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "version": DATALIST_VERSION,
            "root": str(self.root),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "splits": {name: list(self.splits[name]) for name in SPLITS},
            "summary": self.summary(),
            "studies": [self.studies[i].to_json() for i in sorted(self.studies)],
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Datalist:
        """Read ``datalist.json``; a missing or malformed file is an :class:`InputError`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: datalist not found (run `volseg prepare` first)")
        try:
            obj = json.loads(path.read_text())
            studies = {s.id: s for s in (Study.from_json(o) for o in obj["studies"])}
            return cls(
                root=Path(obj["root"]),
                studies=studies,
                splits={name: list(obj["splits"].get(name, [])) for name in SPLITS},
                seed=int(obj.get("seed", 0)),
                val_fraction=float(obj.get("val_fraction", 0.0)),
                test_fraction=float(obj.get("test_fraction", 0.0)),
                cache_dir=Path(obj["cache_dir"]) if obj.get("cache_dir") else None,
            )
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: not a valid datalist ({type(exc).__name__}: {exc})") from exc
