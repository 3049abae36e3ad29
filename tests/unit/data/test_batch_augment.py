"""Batched device-side augmentation: determinism, exact identity and flips, hand-computed
rotations and scalings, binary masks, the recipe's probabilities, MONAI's semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from volseg.data.batch_augment import (
    FLIPS,
    PARAMS_KEY,
    SCALES,
    Param,
    augment_batch,
    draw_params,
    identity_params,
)
from volseg.data.patches import PatchSource, SegPatchDataset
from volseg.data.transforms import DEFAULT_AUGMENT, AugmentRecipe

SHAPE = (16, 16, 6)  # square in-plane, so a quarter turn keeps the shape


def _batch(n: int = 3, seed: int = 0, voxel_weight: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.rand(n, 1, *SHAPE, generator=gen),
        "label": (torch.rand(n, 1, *SHAPE, generator=gen) > 0.8).float(),
        "lungs": (torch.rand(n, 1, *SHAPE, generator=gen) > 0.3).float(),
    }
    if voxel_weight:
        batch["weight"] = torch.where(batch["label"] > 0, 1.0, 0.5)
    else:
        batch["weight"] = torch.full((n,), 0.5)
    return batch


def _params(n: int = 1, **values: float) -> torch.Tensor:
    """``n`` rows of identity parameters with ``values`` (by column name) set."""
    p = identity_params()
    for name, value in values.items():
        p[Param[name]] = value
    return p.expand(n, -1).clone()


def _source(sid: str = "a") -> PatchSource:
    rng = np.random.default_rng(0)
    shape = (40, 36, 10)
    lungs = np.zeros(shape, np.uint8)
    lungs[4:36, 4:32, 1:9] = 1
    label = np.zeros(shape, np.uint8)
    label[20:26, 10:16, 3:7] = 1
    return PatchSource(sid, rng.random(shape).astype(np.float32), label, lungs, 0.5)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_identity_parameters_give_the_batch_back_exactly() -> None:
    batch = _batch()
    out = augment_batch(batch, _params(3))
    assert _equal(out, batch)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_flip_is_torch_flip_on_every_spatial_key(axis: int) -> None:
    batch = _batch()
    flags = torch.tensor([1.0, 0.0, 1.0])
    params = _params(3)
    params[:, FLIPS[axis]] = flags
    out = augment_batch(batch, params)
    for key in ("image", "label", "lungs", "weight"):
        for b, flipped in enumerate(flags.tolist()):
            want = batch[key][b].flip(1 + axis) if flipped else batch[key][b]
            assert torch.equal(out[key][b], want), (key, b)


def test_quarter_turn_about_the_slice_axis_moves_voxels_where_computed() -> None:
    # MONAI samples the input at R @ c (centred voxel coordinates c = i - 7.5 in-plane):
    # at +90 degrees out(c0, c1) = in(-c1, c0), i.e. out[i, j] = in[15 - j, i]
    batch = _batch(1)
    image = torch.zeros(1, 1, *SHAPE)
    image[0, 0, 10, 4, 2] = 1.0  # centred (2.5, -3.5) -> out (-3.5, -2.5) = index (4, 5)
    batch["image"] = image
    out = augment_batch(batch, _params(1, AFFINE=1, ANGLE=np.pi / 2))
    peak = torch.nonzero(out["image"][0, 0] > 0.5).tolist()
    assert peak == [[4, 5, 2]]
    assert torch.allclose(out["image"], image.rot90(-1, dims=(2, 3)), atol=1e-5)
    for key in ("label", "lungs", "weight"):  # nearest: exactly the turned mask
        assert torch.equal(out[key], batch[key].rot90(-1, dims=(2, 3))), key


def test_scaling_an_axis_by_half_doubles_a_block_along_it() -> None:
    # out(c) = in(0.5 c): a block over centred |c0| <= 1.5 (indices 6..9) covers |c0| <= 3.5
    batch = _batch(1)
    label = torch.zeros(1, 1, *SHAPE)
    label[0, 0, 6:10, 5:11, 1:5] = 1.0
    batch["label"] = label
    out = augment_batch(batch, _params(1, AFFINE=1, SCALE_0=0.5))
    want = torch.zeros_like(label)
    want[0, 0, 4:12, 5:11, 1:5] = 1.0
    assert torch.equal(out["label"], want)


def test_intensity_scale_shift_and_noise_as_monai_defines_them() -> None:
    batch = _batch(2)
    params = _params(2, INTENSITY_SCALE_ON=1, INTENSITY_SCALE=0.08, SHIFT_ON=1, SHIFT=-0.03)
    out = augment_batch(batch, params)
    assert torch.allclose(out["image"], batch["image"] * 1.08 - 0.03, atol=1e-6)
    noisy = _params(2, NOISE_ON=1, NOISE_STD=0.02, NOISE_SEED=7)
    noise = augment_batch(batch, noisy)["image"] - batch["image"]
    assert torch.allclose(noise[0], noise[1], atol=1e-6)  # one seed, one noise field
    assert abs(noise.std().item() - 0.02) < 0.002 and abs(noise.mean().item()) < 0.002
    for key in ("label", "lungs", "weight"):
        assert torch.equal(out[key], batch[key]), key


def test_random_parameters_keep_masks_binary_and_shapes() -> None:
    batch = _batch(8)
    for i in range(5):
        rng = np.random.default_rng(i)
        params = torch.stack([draw_params(rng, AugmentRecipe(affine_prob=1.0)) for _ in range(8)])
        out = augment_batch(batch, params)
        for key in batch:
            assert out[key].shape == batch[key].shape, key
        for key in ("label", "lungs"):
            assert set(torch.unique(out[key]).tolist()) <= {0.0, 1.0}, key
        assert set(torch.unique(out["weight"]).tolist()) <= {0.0, 0.5, 1.0}
    scalar = _batch(8, voxel_weight=False)
    assert torch.equal(augment_batch(scalar, params)["weight"], scalar["weight"])


def test_one_sample_in_a_batch_equals_that_sample_alone() -> None:
    batch = _batch(4)
    rng = np.random.default_rng(3)
    params = torch.stack([draw_params(rng, AugmentRecipe(affine_prob=0.5)) for _ in range(4)])
    assert params[:, Param.AFFINE].sum() not in (0, 4)  # a mix of warped and unwarped
    out = augment_batch(batch, params)
    for b in range(4):
        alone = augment_batch({k: v[b : b + 1] for k, v in batch.items()}, params[b : b + 1])
        for key in batch:
            assert torch.equal(out[key][b : b + 1], alone[key]), (key, b)


def test_parameter_draws_follow_the_recipe() -> None:
    n = 4000
    rng = np.random.default_rng(0)
    params = torch.stack([draw_params(rng) for _ in range(n)]).numpy()
    r = DEFAULT_AUGMENT

    def frequency_ok(column: int, p: float) -> bool:
        return abs(params[:, column].mean() - p) <= 4 * np.sqrt(p * (1 - p) / n)

    for column in FLIPS:
        assert frequency_ok(column, r.flip_prob), column
    assert frequency_ok(Param.AFFINE, r.affine_prob)
    for column in (Param.INTENSITY_SCALE_ON, Param.SHIFT_ON, Param.NOISE_ON):
        assert frequency_ok(column, r.intensity_prob), column
    rot = np.deg2rad(r.rotate_deg)
    ranges = {
        Param.ANGLE: (-rot, rot),
        Param.INTENSITY_SCALE: (-r.intensity_scale, r.intensity_scale),
        Param.SHIFT: (-r.intensity_shift, r.intensity_shift),
        Param.NOISE_STD: (0.0, r.noise_std),
        **{s: (1 - r.scale, 1 + r.scale) for s in SCALES},
    }
    for column, (lo, hi) in ranges.items():
        values = params[:, column]
        assert lo <= values.min() and values.max() <= hi, column
        # uniform: each tenth of the range holds ~n/10 (4 sigma)
        counts = np.histogram(values, bins=10, range=(lo, hi))[0]
        assert np.all(np.abs(counts - n / 10) <= 4 * np.sqrt(n * 0.09)), (column, counts)
    seeds = params[:, Param.NOISE_SEED]
    assert len(np.unique(seeds)) == n and np.all(seeds == np.round(seeds))


def test_the_dataset_draws_parameters_per_index_and_keeps_the_crops() -> None:
    device = SegPatchDataset([_source()], (12, 12, 8), seed=3, augment_on="device")
    plain = SegPatchDataset([_source()], (12, 12, 8), seed=3, augment=False)
    item = device[5]
    assert item[PARAMS_KEY].shape == (len(Param),) and item[PARAMS_KEY].dtype == torch.float64
    crop = {k: v for k, v in item.items() if k != PARAMS_KEY}
    assert _equal(crop, plain[5])  # the same crop as without augmentation
    assert PARAMS_KEY not in plain[5]
    assert not torch.equal(device[5][PARAMS_KEY], device[6][PARAMS_KEY])

    def augmented(ds: SegPatchDataset) -> dict[str, torch.Tensor]:
        batch = default_collate([ds[i] for i in range(8, 12)])
        return augment_batch(batch, batch.pop(PARAMS_KEY))

    first = augmented(device)
    fresh = SegPatchDataset([_source()], (12, 12, 8), seed=3, augment_on="device")
    assert _equal(first, augmented(fresh))  # same (seed, index): same augmented batch
    assert not torch.equal(
        first["image"], default_collate([plain[i] for i in range(8, 12)])["image"]
    )


def test_a_flip_only_recipe_gives_the_same_batches_on_both_paths() -> None:
    # one recipe for both paths: with every flip certain and nothing else, they agree exactly
    recipe = AugmentRecipe(flip_prob=1.0, affine_prob=0.0, intensity_prob=0.0)
    kwargs = {"seed": 1, "augment_recipe": recipe}
    worker = SegPatchDataset([_source()], (12, 12, 8), augment_on="worker", **kwargs)
    device = SegPatchDataset([_source()], (12, 12, 8), augment_on="device", **kwargs)
    batch = default_collate([device[i] for i in range(4)])
    out = augment_batch(batch, batch.pop(PARAMS_KEY))
    assert _equal(out, default_collate([worker[i] for i in range(4)]))


def test_fixed_flip_rotation_and_scale_match_monai_flip_then_affine() -> None:
    from monai.transforms import Affine, Flip

    batch = _batch(1)
    angle, scales = 0.15, (1.05, 0.93, 1.08)
    params = _params(1, FLIP_0=1, FLIP_2=1, AFFINE=1, ANGLE=angle)
    params[0, list(SCALES)] = torch.tensor(scales, dtype=torch.float64)
    out = augment_batch(batch, params)
    for key in ("image", "label", "lungs", "weight"):
        mode = "bilinear" if key == "image" else "nearest"
        affine = Affine(
            rotate_params=(0.0, 0.0, angle),
            scale_params=scales,
            mode=mode,
            padding_mode="zeros",
            image_only=True,
        )
        want = torch.as_tensor(affine(Flip(spatial_axis=(0, 2))(batch[key][0])))
        if key == "image":
            assert torch.allclose(out[key][0], want, atol=1e-5)
        else:  # nearest: a tie decided the other way by rounding at most
            assert (out[key][0] != want).float().mean() < 1e-3, key


def test_bad_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="image"):
        augment_batch({"label": torch.zeros(1, 1, 4, 4, 4)}, _params(1))
    with pytest.raises(ValueError, match="B parameters"):
        augment_batch(_batch(2), _params(3))
    with pytest.raises(ValueError, match="augment_on"):
        SegPatchDataset([_source()], (12, 12, 8), augment_on="gpu")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_batch_matches_the_cpu_result_apart_from_noise() -> None:
    batch = _batch(4)
    rng = np.random.default_rng(5)
    params = torch.stack([draw_params(rng, AugmentRecipe(affine_prob=0.5)) for _ in range(4)])
    params[:, Param.NOISE_ON] = 0  # CUDA and CPU generators differ (module docstring)
    cpu = augment_batch(batch, params)
    cuda = augment_batch({k: v.cuda() for k, v in batch.items()}, params)
    assert all(v.is_cuda for v in cuda.values())
    assert torch.allclose(cuda["image"].cpu(), cpu["image"], atol=1e-5)
    for key in ("label", "lungs", "weight"):
        assert (cuda[key].cpu() != cpu[key]).float().mean() < 1e-3, key
