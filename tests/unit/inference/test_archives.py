"""A ``.zip`` of a DICOM series as predict's input: the same mask as the series folder gives,
named by the archive's stem, the temporary folder removed; bad archives are one error line."""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_series import write_ct_series
from tests.oracle import OracleNet
from volseg.bundle import save_bundle
from volseg.cli import main
from volseg.models import registry
from volseg.recipe import Recipe
from volseg.stages.predict import run_predict

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.fixture()
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(registry.MODELS, "oracle", OracleNet)
    return save_bundle(
        tmp_path / "model" / "model.pt",
        OracleNet(),
        "oracle",
        {"level": 0.6},
        Recipe((1.5, 1.5, 5.0), (-1000, 400), (16, 16, 8)),
        {"overlap": 0.25, "min_component_mm3": 0},
    )


@pytest.fixture()
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder archives are unpacked under (checked empty afterwards)."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _series(folder: Path) -> Path:
    """Eight 24 x 20 slices: air, lung at -850 HU, two bright blobs (the oracle's lesion)."""
    hu = np.full((8, 20, 24), -850, dtype=np.int16)  # (z, y, x)
    hu[:, :3, :] = -1000
    hu[4, 8:12, 10:14] = 300
    hu[2, 3:6, 16:21] = 250
    write_ct_series(folder, hu, spacing=(0.8, 0.8, 5.0))
    return folder


def _zip(archive: Path, files: dict[str, Path | bytes]) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            if isinstance(content, Path):
                zf.write(content, name)
            else:
                zf.writestr(name, content)
    return archive


def _zip_series(archive: Path, series: Path, under: str = "patient/ct/") -> Path:
    return _zip(archive, {under + f.name: f for f in sorted(series.iterdir())})


def test_zip_gives_the_folder_s_mask_bit_for_bit(bundle: Path, scratch: Path, tmp_path: Path):
    series = _series(tmp_path / "series")
    archive = _zip_series(tmp_path / "in" / "study_42.zip", series)
    run_predict(bundle, series, tmp_path / "from_folder", use_lungs=False)
    run_predict(bundle, archive, tmp_path / "from_zip", use_lungs=False, output_type="both")
    folder_img = nib.load(tmp_path / "from_folder" / "series_mask.nii.gz")
    zip_img = nib.load(tmp_path / "from_zip" / "study_42_mask.nii.gz")
    mask = np.asarray(zip_img.dataobj)
    assert mask.any()
    assert np.array_equal(mask, np.asarray(folder_img.dataobj))
    assert np.array_equal(zip_img.affine, folder_img.affine)
    assert zip_img.header.binaryblock == folder_img.header.binaryblock
    info = json.loads((tmp_path / "from_zip" / "study_42.json").read_text())
    assert info["id"] == "study_42" and info["input"] == str(archive)
    assert (tmp_path / "from_zip" / "study_42_seg.dcm").is_file()  # slices read at the end
    summary = (tmp_path / "from_zip" / "summary.csv").read_text()
    assert f"study_42,{archive}," in summary
    assert list(scratch.iterdir()) == []  # unpacked series removed


def _cli(capfd: pytest.CaptureFixture, *argv: object) -> tuple[int, list[str]]:
    capfd.readouterr()
    rc = main([str(a) for a in argv])
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    return rc, [ln for ln in err.splitlines() if ln.strip() and not LOG_LINE.match(ln)]


def _bad_archives(tmp_path: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    series = _series(tmp_path / "series")
    good = _zip_series(tmp_path / "good.zip", series)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    damaged = tmp_path / "damaged.zip"
    flipped = bytearray(data)
    flipped[300:340] = bytes(40)  # inside the first member's compressed data
    damaged.write_bytes(bytes(flipped))
    files = sorted(series.iterdir())
    gap = {f"ct/{f.name}": f for f in files if f.name != "003.dcm"}
    return {
        "truncated": (truncated, ("not a readable zip archive",)),
        "damaged": (damaged, ("not a readable zip archive",)),
        "not_a_zip": (_zip_text(tmp_path / "text.zip"), ("not a readable zip archive",)),
        "no_dicom": (
            _zip(tmp_path / "notes.zip", {"a/readme.txt": b"hello", "scan.nii": b"x"}),
            ("no DICOM series in the archive",),
        ),
        "missing_slice": (
            _zip(tmp_path / "gap.zip", gap),
            ("gap.zip:ct", "missing or misplaced slice", "002.dcm", "004.dcm"),
        ),
    }


def _zip_text(path: Path) -> Path:
    path.write_text("this is not an archive\n")
    return path


@pytest.mark.parametrize(
    "fault", ["truncated", "damaged", "not_a_zip", "no_dicom", "missing_slice"]
)
def test_bad_archive_is_one_error_line_naming_it(
    fault: str, bundle: Path, scratch: Path, tmp_path: Path, capfd
) -> None:
    archive, needles = _bad_archives(tmp_path)[fault]
    out = tmp_path / "out"
    rc, lines = _cli(capfd, "predict", "-m", bundle, "-i", archive, "-o", out, "--no-progress")
    assert rc == 2 and len(lines) == 1, lines
    assert str(archive.name) in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert str(scratch) not in lines[0]  # the archive is named, not the temporary folder
    assert not out.exists()
    assert list(scratch.iterdir()) == []


def test_archive_with_two_series_needs_series(
    bundle: Path, scratch: Path, tmp_path: Path, capfd
) -> None:
    a, b = _series(tmp_path / "a"), _series(tmp_path / "b")
    uid_b = _series_uid(b)
    files = {f"a/{f.name}": f for f in sorted(a.iterdir())}
    files |= {f"b/{f.name}": f for f in sorted(b.iterdir())}
    archive = _zip(tmp_path / "two.zip", files)
    rc, lines = _cli(capfd, "predict", "-m", bundle, "-i", archive, "-o", tmp_path / "o")
    assert rc == 2 and len(lines) == 1 and "2 DICOM series" in lines[0] and uid_b in lines[0]
    rc, lines = _cli(
        capfd, "predict", "-m", bundle, "-i", archive, "-o", tmp_path / "o", "--series", uid_b
    )
    assert rc == 0 and lines == []
    assert (tmp_path / "o" / "two_mask.nii.gz").is_file()
    assert list(scratch.iterdir()) == []


def _series_uid(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
