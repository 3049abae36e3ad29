"""Lesions painted into a (phantom) healthy CT: truth inside the lungs, the grade asked for,
the anatomy kept, deterministic; ``volseg synth --paint`` writes a MosMed-layout set."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.chest_phantom import chest_phantom
from volseg.data.paint import paint_patch, paint_study
from volseg.quantify import grade_from_involvement

AFFINE = np.diag([-1.4, -1.4, 8.0, 1.0])


@pytest.fixture(scope="module")
def healthy() -> np.ndarray:
    hu, _, lesion = chest_phantom()
    hu[lesion] = -850.0  # the phantom's own lesion removed: a healthy chest
    return np.round(hu).astype(np.int16)


@pytest.mark.parametrize("category", ["CT-1", "CT-2", "CT-3"])
def test_painted_lesions_have_the_grade_and_stay_in_the_lungs(healthy, category) -> None:
    before = healthy.copy()
    study = paint_study(healthy, AFFINE, category, seed=3)
    assert np.array_equal(healthy, before)  # the input is not modified
    lungs = study.lungs > 0
    lesion = study.lesion > 0
    assert lesion.any() and not (lesion & ~lungs).any()
    involvement = 100.0 * lesion.sum() / lungs.sum()
    assert involvement == pytest.approx(study.involvement_pct)
    assert grade_from_involvement(involvement) == int(category[-1])
    changed = study.image != healthy
    assert not (changed & ~lungs).any()  # outside the lungs the scan is untouched
    assert (study.image >= healthy).all()  # painting never darkens (vessels stay visible)
    gain = study.image[lesion].astype(float) - healthy[lesion]
    assert np.median(gain) > 100  # a lesion is visible where the truth says so
    assert set(np.unique(study.lesion_types[lesion])) <= {1, 2}
    assert not study.lesion_types[~lesion].any()


def test_painting_is_deterministic_per_seed(healthy) -> None:
    a = paint_study(healthy, AFFINE, "CT-2", seed=5)
    b = paint_study(healthy, AFFINE, "CT-2", seed=5)
    c = paint_study(healthy, AFFINE, "CT-2", seed=6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lesion, b.lesion)
    assert not np.array_equal(a.lesion, c.lesion)


def test_a_given_lung_mask_is_painted_into_and_returned(healthy) -> None:
    own = paint_study(healthy, AFFINE, "CT-2", seed=5).lungs > 0
    given = own.copy()
    given[: given.shape[0] // 2] = False  # one lung only: lesions must stay in it
    study = paint_study(healthy, AFFINE, "CT-2", seed=5, lungs=given.astype(np.uint8))
    assert np.array_equal(study.lungs > 0, given)
    assert study.lesion.any() and not (study.lesion.astype(bool) & ~given).any()
    assert not (study.image != healthy)[~given].any()
    with pytest.raises(ValueError, match="lung mask shape"):
        paint_study(healthy, AFFINE, "CT-2", seed=5, lungs=given[:-1])


def _crop_lungs(shape: tuple[int, int, int]) -> np.ndarray:
    lungs = np.zeros(shape, dtype=bool)
    lungs[4:28, 6:26, 1:7] = True  # a lung block that meets non-lung on every side
    return lungs


@pytest.mark.parametrize("category", ["CT-1", "CT-3"])
def test_a_painted_crop_changes_only_its_lungs_and_reaches_the_band(category) -> None:
    """The GAN's crops get the same lesion model: painted only in the lung, only where the
    weight map says, never darker, and with about the band's share of the crop's lung."""
    rng = np.random.default_rng(0)
    hu = (-850.0 + 20.0 * rng.standard_normal((32, 32, 8))).astype(np.float32)
    lungs = _crop_lungs(hu.shape)
    shares = []
    for seed in range(6):
        before = hu.copy()
        image, weight = paint_patch(
            hu, lungs, (2.8, 2.8, 10.0), category, np.random.default_rng(seed)
        )
        assert np.array_equal(hu, before)  # the input is not modified
        changed = image != hu
        assert not (changed & ~lungs).any() and not (weight[~lungs] > 0).any()
        assert np.array_equal(changed, weight > 0)
        assert (image >= hu).all()
        assert np.median(image[weight > 0.5] - hu[weight > 0.5]) > 100
        shares.append(100.0 * (weight > 0.5).sum() / lungs.sum())
    low, high = {"CT-1": (3.0, 20.0), "CT-3": (54.0, 71.0)}[category]
    assert low - 3 <= np.median(shares) <= high + 3


def test_a_painted_crop_is_deterministic_and_a_lungless_one_untouched() -> None:
    hu = np.full((32, 32, 8), -850.0, dtype=np.float32)
    lungs = _crop_lungs(hu.shape)
    a = paint_patch(hu, lungs, (2.8, 2.8, 10.0), "CT-2", np.random.default_rng(4))
    b = paint_patch(hu, lungs, (2.8, 2.8, 10.0), "CT-2", np.random.default_rng(4))
    c = paint_patch(hu, lungs, (2.8, 2.8, 10.0), "CT-2", np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    image, weight = paint_patch(
        hu, np.zeros_like(lungs), (2.8, 2.8, 10.0), "CT-2", np.random.default_rng(4)
    )
    assert np.array_equal(image, hu) and not weight.any()
    sliver = np.zeros_like(lungs)
    sliver[10, 5:20, 3] = True  # one voxel wide: all of it on one side of the crop's midline
    image, weight = paint_patch(hu, sliver, (2.8, 2.8, 10.0), "CT-2", np.random.default_rng(4))
    assert (weight > 0.5).any() and not (weight[~sliver] > 0).any()


def test_synth_paint_writes_a_mosmed_layout_set(healthy, tmp_path: Path, capfd) -> None:
    from volseg.cli import main

    src = tmp_path / "healthy"
    src.mkdir()
    nib.save(nib.Nifti1Image(healthy, AFFINE), src / "chest_a.nii.gz")
    lungs = (healthy < -400).astype(np.uint8)  # a mask beside its CT, as in shared/data/real
    nib.save(nib.Nifti1Image(lungs, AFFINE), src / "chest_a_lungs.nii.gz")
    out = tmp_path / "painted"
    assert main(["synth", "--paint", str(src), "--out", str(out)]) == 0
    for category in ("CT-1", "CT-2", "CT-3"):
        sid = f"chest_a_{category.lower().replace('-', '')}"
        assert (out / "studies" / category / f"{sid}.nii.gz").is_file()
        assert (out / "truth" / f"{sid}_mask.nii.gz").is_file()
        assert (out / "lesion_types" / f"{sid}_types.nii.gz").is_file()
        assert (out / "lungs" / f"{sid}_lungs.nii.gz").is_file()
    assert len((out / "manifest.csv").read_text().splitlines()) == 4  # the mask not painted
    assert main(["synth", "--paint", str(src), "--out", str(out)]) == 2  # never overwritten
    assert "exists" in capfd.readouterr().err
    assert main(["synth", "--paint", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
