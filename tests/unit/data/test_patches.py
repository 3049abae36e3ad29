"""Step-indexed patch datasets: determinism per index, shapes, lesion bias, padding, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from volseg.data.patches import (
    PatchSource,
    SegPatchDataset,
    UnlabeledPatchDataset,
    crop_padded,
    crop_start,
    cut_field_of_view,
)

PATCH = (12, 12, 8)


def _source(shape=(40, 36, 10), sid="a", weight=1.0) -> PatchSource:
    rng = np.random.default_rng(0)
    lungs = np.zeros(shape, np.uint8)
    lungs[4:36, 4:32, 1:9] = 1
    label = np.zeros(shape, np.uint8)
    label[30:32, 6:8, 4:6] = 1  # a small lesion in a corner of the lungs
    image = rng.random(shape).astype(np.float16)
    return PatchSource(sid, image, label, lungs, weight)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seg_patches_shapes_and_determinism() -> None:
    ds = SegPatchDataset([_source()], PATCH, seed=3, pos_fraction=0.5, augment=True)
    item = ds[7]
    for key in ("image", "label", "lungs"):
        assert item[key].shape == (1, *PATCH) and item[key].dtype == torch.float32
    assert item["weight"].shape == () and float(item["weight"]) == 1.0
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}
    assert _same(item, ds[7])
    fresh = SegPatchDataset([_source()], PATCH, seed=3, pos_fraction=0.5, augment=True)
    assert _same(item, fresh[7])  # a fresh dataset (e.g. after resume) gives the same sample
    assert not _same(ds[7], ds[8])
    other_seed = SegPatchDataset([_source()], PATCH, seed=4, pos_fraction=0.5, augment=True)
    assert not all(_same(ds[i], other_seed[i]) for i in range(4))


def test_field_of_view_cut_blanks_outside_a_run_of_slices_around_the_centre() -> None:
    # a positive crop's centre voxel is a lesion voxel; every cut crop keeps it, blanks the
    # image, label and lungs outside one run of whole slices, and keeps a quarter or more
    depth = PATCH[2]
    cut = SegPatchDataset(
        [_source()], PATCH, seed=1, pos_fraction=1.0, augment=False, fov_cut_prob=1.0
    )
    whole = SegPatchDataset([_source()], PATCH, seed=1, pos_fraction=1.0, augment=False)
    lengths = set()
    for i in range(60):
        item = cut[i]
        filled = (item["image"][0] != 0).any(dim=(0, 1)).numpy()
        kept = np.flatnonzero(filled)
        assert kept.size and np.array_equal(kept, np.arange(kept[0], kept[-1] + 1))
        assert depth // 4 <= kept.size <= depth - 1
        for key in ("label", "lungs"):
            assert not item[key][0][..., ~filled].any()
        assert item["label"].sum() > 0  # the lesion at the centre is in view
        lengths.add(int(kept.size))
    assert len(lengths) > 3  # lengths vary
    assert all((whole[i]["image"][0] != 0).any(dim=(0, 1)).all() for i in range(10))  # uncut


def test_field_of_view_cut_off_draws_nothing_and_half_cuts_about_half() -> None:
    off = SegPatchDataset([_source()], PATCH, seed=2, augment=True, fov_cut_prob=0.0)
    default = SegPatchDataset([_source()], PATCH, seed=2, augment=True)
    assert all(_same(off[i], default[i]) for i in range(5))  # runs without it are unchanged
    half = SegPatchDataset([_source()], PATCH, seed=2, augment=False, fov_cut_prob=0.5)
    n = 200
    blanked = np.mean([bool((half[i]["image"][0] == 0).all(dim=(0, 1)).any()) for i in range(n)])
    assert abs(blanked - 0.5) <= 3 * np.sqrt(0.25 / n)
    with pytest.raises(ValueError, match="fov_cut_prob"):
        SegPatchDataset([_source()], PATCH, fov_cut_prob=1.5)


def test_cut_field_of_view_keeps_the_given_slice_and_weight_map() -> None:
    rng = np.random.default_rng(0)
    for keep in (0, 3, 7):
        data = {k: torch.ones(1, 4, 4, 8) for k in ("image", "label", "lungs", "weight")}
        data["extra"] = torch.ones(3)
        first, stop = cut_field_of_view(data, keep, rng)
        assert first <= keep < stop and 2 <= stop - first <= 7
        for key in ("image", "label", "lungs", "weight"):
            column = data[key][0, 0, 0]
            assert column[first:stop].eq(1).all() and column.sum() == stop - first
        assert data["extra"].eq(1).all()


@pytest.mark.parametrize("pos_fraction", [0.0, 0.3, 1.0])
def test_lesion_biased_fraction(pos_fraction: float) -> None:
    ds = SegPatchDataset([_source()], PATCH, seed=0, pos_fraction=pos_fraction, augment=False)
    n = 300
    # a positive crop has a lesion voxel at its centre; a lung crop almost never does
    # (8 lesion voxels among ~7000 lung voxels)
    centred = np.mean([ds[i]["label"][0, 6, 6, 4].item() > 0 for i in range(n)])
    assert abs(centred - pos_fraction) <= 3 * np.sqrt(0.25 / n)


def test_source_probabilities_set_each_volumes_share() -> None:
    # source "b" weighs 0.5 and "c" 0.2 of the crops, whatever their count
    sources = [_source(sid="a", weight=1.0), _source(sid="b", weight=0.5)]
    sources.append(_source(sid="c", weight=0.25))
    ds = SegPatchDataset(sources, PATCH, seed=0, augment=False, source_probs=[0.3, 0.5, 0.2])
    n = 600
    seen = [float(ds[i]["weight"]) for i in range(n)]
    for weight, share in ((1.0, 0.3), (0.5, 0.5), (0.25, 0.2)):
        assert abs(seen.count(weight) / n - share) <= 3 * np.sqrt(share * (1 - share) / n)
    uniform = SegPatchDataset(sources, PATCH, seed=0, augment=False)
    assert _same(uniform[5], SegPatchDataset(sources, PATCH, seed=0, augment=False)[5])
    with pytest.raises(ValueError, match="sum to 1"):
        SegPatchDataset(sources, PATCH, source_probs=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="3 non-negative"):
        SegPatchDataset(sources, PATCH, source_probs=[0.5, 0.5])


def test_source_phases_change_the_draw_from_their_index() -> None:
    sources = [_source(sid="a", weight=1.0), _source(sid="b", weight=0.5)]
    ds = SegPatchDataset(
        sources, PATCH, seed=0, augment=False, source_phases=[(40, [1.0, 0.0]), (80, None)]
    )
    weights = [float(ds[i]["weight"]) for i in range(120)]
    assert 0.5 in weights[:40]  # uniform before the first phase
    assert set(weights[40:80]) == {1.0}  # source "b" never drawn
    assert 0.5 in weights[80:]  # uniform again
    # a sample is still a function of its index alone
    assert _same(
        ds[50],
        SegPatchDataset(sources, PATCH, seed=0, augment=False, source_phases=[(40, [1.0, 0.0])])[
            50
        ],
    )
    with pytest.raises(ValueError, match="start after"):
        SegPatchDataset(sources, PATCH, source_phases=[(10, None), (10, None)])


def test_patches_stay_in_lungs_when_not_positive() -> None:
    src = _source()
    ds = SegPatchDataset([src], PATCH, seed=1, pos_fraction=0.0, augment=False)
    for i in range(30):
        assert ds[i]["lungs"][0, 6, 6, 4] == 1  # centre voxel in the lungs


def test_small_volume_is_padded() -> None:
    src = _source(shape=(8, 30, 5))
    ds = SegPatchDataset([src], PATCH, seed=0, augment=False)
    item = ds[0]
    assert item["image"].shape == (1, *PATCH)
    img = item["image"][0].numpy()
    # the whole 8-voxel x extent and 5-voxel z extent are inside the patch, the rest is zero
    assert (np.abs(img).sum(axis=(1, 2)) > 0).sum() == 8
    assert (np.abs(img).sum(axis=(0, 1)) > 0).sum() == 5


def test_weights_scalar_and_voxel_map() -> None:
    true = _source(sid="true", weight=1.0)
    wmap = np.full((40, 36, 10), 0.25, np.float32)
    pseudo = _source(sid="pseudo", weight=wmap)
    ds = SegPatchDataset([true, pseudo], PATCH, seed=0, augment=True)
    values = set()
    for i in range(12):
        w = ds[i]["weight"]
        assert w.shape == (1, *PATCH)
        values |= set(np.round(torch.unique(w).numpy(), 3).tolist())
    assert {1.0, 0.25} <= values
    scalar = SegPatchDataset([_source(weight=0.5)], PATCH, seed=0, augment=False)
    assert float(scalar[0]["weight"]) == 0.5


def test_unlabeled_patches_and_views() -> None:
    src = _source()
    src.label = None
    ds = UnlabeledPatchDataset([src], PATCH, seed=0, views=2)
    item = ds[5]
    assert item["image"].shape == (1, *PATCH)
    assert item["views"].shape == (2, 1, *PATCH)
    assert not torch.equal(item["views"][0], item["views"][1])
    assert item["lungs"][0, 6, 6, 4] == 1
    assert _same(item, ds[5])
    with pytest.raises(ValueError, match="no label"):
        SegPatchDataset([src], PATCH)


def test_loader_batches_through_step_sampler() -> None:
    from volseg.engine.step_data import StepSampler, make_loader

    ds = SegPatchDataset([_source(), _source(sid="b")], PATCH, seed=0, augment=True)
    batches = list(make_loader(ds, StepSampler(0, 2, batch_size=3)))
    assert len(batches) == 2 and batches[0]["image"].shape == (3, 1, *PATCH)
    resumed = list(make_loader(ds, StepSampler(1, 2, batch_size=3)))
    assert torch.equal(resumed[0]["image"], batches[1]["image"])


def test_crop_helpers() -> None:
    assert crop_start((0, 50, 2), (100, 100, 4), (10, 10, 8)) == [0, 45, -2]
    assert crop_start((99, 50, 0), (100, 100, 4), (10, 10, 8)) == [90, 45, -4]
    a = np.arange(24).reshape(2, 3, 4)
    out = crop_padded(a, (-1, 0, 2), (3, 3, 3), fill=-1)
    assert out.shape == (3, 3, 3)
    assert (out[0] == -1).all() and (out[1:, :, 2] == -1).all()
    np.testing.assert_array_equal(out[1:, :, :2], a[:, :, 2:4])


def test_cached_volumes_feed_the_datasets(tmp_path: Path) -> None:
    from tests.unit.data.test_mosmed import make_mosmed
    from volseg.data.cache import build_cache
    from volseg.data.mosmed import discover
    from volseg.recipe import Recipe

    make_mosmed(tmp_path / "d", {"CT-1": 1}, labeled=1, with_lungs=True)
    vols = build_cache(
        discover(tmp_path / "d"),
        Recipe((5, 5, 10), (-1000, 400), (16, 16, 8)),
        None,
        tmp_path / "c",
    )
    ds = SegPatchDataset(list(vols.values()), PATCH, seed=0, pos_fraction=1.0, augment=False)
    assert ds[0]["label"].sum() > 0
    un = UnlabeledPatchDataset(list(vols.values()), PATCH, seed=0)
    assert un[0]["image"].shape == (1, *PATCH)
