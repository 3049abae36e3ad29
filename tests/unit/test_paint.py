"""Lesions painted into a (phantom) healthy CT: truth inside the lungs, the grade asked for,
the anatomy kept, deterministic; ``volseg synth --paint`` writes a MosMed-layout set."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.chest_phantom import chest_phantom
from volseg.data.paint import paint_study
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
