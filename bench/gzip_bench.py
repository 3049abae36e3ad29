"""Bytes in and out of predict: gzip decode of a CT and encode of a mask, by library.

Times, on the same bytes in one run: decoding a ``.nii.gz`` CT (the whole-chest LIDC-IDRI
CT in ``../shared/data/real`` when present, else a synthetic ``mosmed`` study) with the
standard library's zlib and, when installed, ``isal`` (``pip install isal``) and
``zlib-ng``; and encoding a lesion mask of that grid at the fastest level (1) and a high one
(6; isal's highest is 3) with file size and time. Prints one table; every output is checked to decode to the same bytes.
Then the whole read of that file to float32 voxels as predict does it: nibabel's
``np.asanyarray(img.dataobj, dtype=float32)`` (the reference, what volseg did before) against
:func:`volseg.io.decode_nifti` (ISA-L inflate, numpy cast), same values checked.

    python bench/gzip_bench.py
"""

from __future__ import annotations

import gzip
import importlib
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _inputs(folder: Path) -> tuple[Path, bytes, str]:
    """(a CT .nii.gz file, raw bytes of a mask on its grid, description)."""
    import nibabel as nib

    path = REAL / "lidc_idri_0001_chest_ct.nii.gz"
    if path.exists():
        ct = np.asanyarray(nib.load(str(path)).dataobj)
        name = f"LIDC-IDRI-0001 {ct.shape}"
    else:
        from volseg.data.synth import synthesize_study
        from volseg.io import write_nifti

        study = synthesize_study("mosmed", "CT-2", 0)
        ct = study.image
        name = f"synthetic mosmed CT-2 {ct.shape}"
        path = write_nifti(folder / "ct.nii.gz", ct.astype(np.int16), study.affine)
    mask = np.zeros(ct.shape, np.uint8)
    mask[ct.shape[0] // 4 : ct.shape[0] // 2, ct.shape[1] // 3 : ct.shape[1] // 2] = 1
    return path, mask.tobytes(), name


def _whole_read(path: Path) -> None:
    """The file to float32 voxels: nibabel's scaled read against decode_nifti."""
    import nibabel as nib

    from volseg.io import decode_nifti, load_nifti

    def reference() -> np.ndarray:
        return np.asanyarray(nib.load(str(path)).dataobj, dtype=np.float32)

    def volseg() -> np.ndarray:
        return decode_nifti(load_nifti(path), path, np.float32)

    assert np.array_equal(reference(), volseg())
    ref, ours = _best_of(reference), _best_of(volseg)
    print(f"{'read to float32':24s} {'s':>8s}")
    print(f"{'nibabel dataobj':24s} {ref:8.3f}")
    print(f"{'volseg decode_nifti':24s} {ours:8.3f}  ({ref / ours:.2f}x)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, mask_raw, name = _inputs(Path(tmp))
        _libraries(path.read_bytes(), mask_raw, name)
        _whole_read(path)


def _libraries(ct_gz: bytes, mask_raw: bytes, name: str) -> None:
    """Inflate the CT and deflate the mask with each installed library."""
    raw = gzip.decompress(ct_gz)
    libs = {"zlib (stdlib)": zlib}
    for label, module in (("isal", "isal.isal_zlib"), ("zlib-ng", "zlib_ng.zlib_ng")):
        try:
            libs[label] = importlib.import_module(module)
        except ImportError:
            print(f"{label}: not installed, skipped")
    print(f"CT: {name}, {len(ct_gz) / 1e6:.1f} MB gzip, {len(raw) / 1e6:.1f} MB raw")
    print(
        f"{'library':16s} {'decode CT (s)':>14s} {'encode mask L1 (s)':>19s} "
        f"{'L1 size (kB)':>13s} {'encode L6* (s)':>14s} {'L6* size (kB)':>13s}  (*isal: level 3, its highest)"
    )
    for label, lib in libs.items():

        def decode(lib=lib) -> bytes:
            return lib.decompress(ct_gz, 31)  # wbits 31: gzip container

        assert decode() == raw
        sizes, times = {}, {}
        for level in (1, 6):
            real_level = 3 if label == "isal" and level == 6 else level  # isal's highest

            def encode(lib=lib, level=real_level) -> bytes:
                c = lib.compressobj(level, zlib.DEFLATED, 31)
                return c.compress(mask_raw) + c.flush()

            out = encode()
            assert gzip.decompress(out) == mask_raw
            sizes[level], times[level] = len(out) / 1e3, _best_of(encode)
        print(
            f"{label:16s} {_best_of(decode):14.3f} {times[1]:19.3f} {sizes[1]:13.1f} "
            f"{times[6]:14.3f} {sizes[6]:13.1f}"
        )


if __name__ == "__main__":
    main()
