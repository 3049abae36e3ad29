"""MosMed layout discovery, patient-level stratified splits and the datalist JSON."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from volseg.data import layout
from volseg.data.mosmed import SPLITS, Datalist, Study, discover, split_studies
from volseg.errors import InputError
from volseg.io import write_nifti

AFFINE = np.diag([-5.0, 5.0, 10.0, 1.0])


def phantom(shape=(48, 40, 10), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny chest-like CT (air, body, two lungs) in HU and its lung mask."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    lungs = np.zeros(shape, bool)
    for cx in (-0.38, 0.38):
        lungs |= ((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 0.9) ** 2 < 1
    ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, shape)
    ct[lungs] = -850 + rng.normal(0, 30, int(lungs.sum()))
    return ct.astype(np.int16), lungs.astype(np.uint8)


def make_mosmed(
    root: Path,
    plan: dict[str, int],
    labeled: int = 0,
    *,
    with_lungs: bool = False,
    with_truth: bool = False,
    shape=(48, 40, 10),
) -> list[str]:
    """Write a MosMed-layout dataset: ``plan`` maps category -> number of studies.

    The first ``labeled`` non-CT-0 studies get a mask (a lesion blob inside the lungs).
    Returns the study ids in writing order.
    """
    ids, n, given = [], 0, 0
    for category, count in plan.items():
        for _ in range(count):
            n += 1
            sid = f"study_{n:04d}"
            ct, lungs = phantom(shape, seed=n)
            lesion = np.zeros(shape, np.uint8)
            if category != "CT-0":
                c = np.argwhere(lungs)[len(np.argwhere(lungs)) // 3]
                lesion[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 1 : c[2] + 1] = 1
                lesion &= lungs
                ct[lesion > 0] = -300
            write_nifti(layout.image_path(root, category, sid), ct, AFFINE)
            if category != "CT-0" and given < labeled:
                write_nifti(layout.mask_path(root, sid), lesion, AFFINE)
                given += 1
            if with_lungs:
                write_nifti(layout.lungs_path(root / layout.LUNGS_DIR, sid), lungs, AFFINE)
            if with_truth:
                write_nifti(layout.truth_path(root, sid), lesion, AFFINE)
            ids.append(sid)
    return ids


def fake_studies(plan: dict[tuple[str, bool], int]) -> list[Study]:
    """Study records without files, for split tests."""
    out, n = [], 0
    for (category, labeled), count in plan.items():
        for _ in range(count):
            n += 1
            sid = f"study_{n:04d}"
            mask = Path(f"/m/{sid}_mask.nii.gz") if labeled else None
            out.append(Study(sid, category, Path(f"/s/{sid}.nii.gz"), mask))
    return out


# ------------------------------------------------------------------ discovery


def test_discover_finds_studies_masks_lungs_truth(tmp_path: Path) -> None:
    make_mosmed(
        tmp_path, {"CT-0": 2, "CT-1": 3, "CT-2": 1}, labeled=2, with_lungs=True, with_truth=True
    )
    studies = discover(tmp_path)
    assert [s.id for s in studies] == [f"study_{i:04d}" for i in range(1, 7)]
    cats = Counter(s.category for s in studies)
    assert cats == {"CT-0": 2, "CT-1": 3, "CT-2": 1}
    assert [s.id for s in studies if s.labeled] == ["study_0003", "study_0004"]
    assert all(s.healthy == (s.category == "CT-0") for s in studies)
    assert all(s.lungs is not None and s.lungs.is_file() for s in studies)
    assert all(s.truth is not None for s in studies)
    first = studies[2]
    assert first.image == layout.image_path(tmp_path, "CT-1", "study_0003")
    assert first.mask == layout.mask_path(tmp_path, "study_0003")


def test_discover_without_optional_folders(tmp_path: Path) -> None:
    make_mosmed(tmp_path, {"CT-1": 2})
    studies = discover(tmp_path)
    assert len(studies) == 2
    assert not any(s.labeled or s.lungs or s.truth for s in studies)


@pytest.mark.parametrize("case", ["missing_root", "no_studies_dir", "empty_categories"])
def test_discover_bad_roots_name_the_folder(tmp_path: Path, case: str) -> None:
    root = tmp_path / "data"
    if case != "missing_root":
        root.mkdir()
    if case == "empty_categories":
        (root / "studies" / "CT-1").mkdir(parents=True)
    with pytest.raises(InputError, match=str(root)):
        discover(root)


def test_mask_without_study_is_an_error(tmp_path: Path) -> None:
    make_mosmed(tmp_path, {"CT-1": 1})
    orphan = layout.mask_path(tmp_path, "study_0999")
    write_nifti(orphan, np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(InputError, match="study_0999_mask"):
        discover(tmp_path)


def test_same_id_in_two_categories_is_an_error(tmp_path: Path) -> None:
    make_mosmed(tmp_path, {"CT-1": 1})
    dup = layout.image_path(tmp_path, "CT-2", "study_0001")
    write_nifti(dup, np.zeros((4, 4, 4), np.int16), np.eye(4))
    with pytest.raises(InputError, match="study_0001"):
        discover(tmp_path)


# ------------------------------------------------------------------ splits

MOSMED_LIKE = {
    ("CT-0", False): 40,
    ("CT-1", False): 60,
    ("CT-1", True): 10,
    ("CT-2", False): 12,
    ("CT-3", False): 5,
    ("CT-4", False): 1,
}


def test_split_is_a_partition_with_the_requested_sizes() -> None:
    studies = fake_studies(MOSMED_LIKE)
    splits = split_studies(studies, 0.15, 0.25, seed=0)
    all_ids = [i for name in SPLITS for i in splits[name]]
    assert sorted(all_ids) == sorted(s.id for s in studies)
    assert len(set(all_ids)) == len(all_ids)
    n = len(studies)
    assert abs(len(splits["test"]) - 0.25 * n) <= 1
    assert abs(len(splits["val"]) - 0.15 * n) <= 1


def test_split_is_stratified_by_category_and_labeled() -> None:
    studies = fake_studies(MOSMED_LIKE)
    splits = split_studies(studies, 0.15, 0.25, seed=3)
    by_id = {s.id: s for s in studies}
    for (category, labeled), count in MOSMED_LIKE.items():
        in_test = [
            i
            for i in splits["test"]
            if by_id[i].category == category and by_id[i].labeled == labeled
        ]
        # every stratum's test share is within one study of 25 % (cumulative rounding)
        assert abs(len(in_test) - 0.25 * count) <= 1, (category, labeled)
    labeled_test = sum(by_id[i].labeled for i in splits["test"])
    assert labeled_test in (2, 3)


def test_split_is_deterministic_by_seed() -> None:
    studies = fake_studies(MOSMED_LIKE)
    assert split_studies(studies, 0.15, 0.25, 7) == split_studies(
        list(reversed(studies)), 0.15, 0.25, 7
    )
    assert split_studies(studies, 0.15, 0.25, 7) != split_studies(studies, 0.15, 0.25, 8)


@pytest.mark.parametrize("n_labeled", [3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_few_labeled_reach_val_and_test(n_labeled: int, seed: int) -> None:
    studies = fake_studies({("CT-0", False): 6, ("CT-1", False): 10, ("CT-1", True): n_labeled})
    splits = split_studies(studies, 0.1, 0.1, seed)
    labeled = {s.id for s in studies if s.labeled}
    for name in SPLITS:
        assert labeled & set(splits[name]), name
    assert sum(len(v) for v in splits.values()) == len(studies)


def test_split_rejects_duplicates_and_bad_fractions() -> None:
    studies = fake_studies({("CT-1", False): 3})
    with pytest.raises(InputError, match="duplicate"):
        split_studies(studies + studies[:1], 0.1, 0.1, 0)
    with pytest.raises(ValueError):
        split_studies(studies, 0.6, 0.5, 0)


# ------------------------------------------------------------------ datalist


def test_datalist_selections_and_json_roundtrip(tmp_path: Path) -> None:
    make_mosmed(tmp_path / "data", {"CT-0": 4, "CT-1": 8, "CT-2": 2}, labeled=4)
    dl = Datalist.build(tmp_path / "data", 0.2, 0.2, seed=0)
    train = {s.id for s in dl.train_studies()}
    test = set(dl.splits["test"])
    assert train and test and not train & test
    assert all(s.labeled for s in dl.labeled("val"))
    assert all(not s.labeled for s in dl.unlabeled(("train", "val")))
    assert all(s.healthy for s in dl.healthy("train"))
    assert all(not s.healthy and not s.labeled for s in dl.covid_unlabeled("train"))
    assert dl.labeled("val") and dl.labeled("test")
    with pytest.raises(ValueError, match="unknown split"):
        dl.studies_in("everything")

    path = dl.save(tmp_path / "run" / "datalist.json")
    again = Datalist.load(path)
    assert again.splits == dl.splits
    assert again.studies == dl.studies
    assert again.summary() == dl.summary()
    assert sum(r["labeled"] for t in dl.summary().values() for r in t.values()) == 4


def test_datalist_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="datalist not found"):
        Datalist.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"studies": 3}')
    with pytest.raises(InputError, match="bad.json"):
        Datalist.load(bad)
    s = Study("a", "CT-1", Path("a.nii.gz"))
    with pytest.raises(InputError, match="both"):
        Datalist(Path("."), {"a": s}, {"train": ["a"], "val": [], "test": ["a"]})
