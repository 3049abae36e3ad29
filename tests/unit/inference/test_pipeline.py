"""The predict pipeline: input order kept, errors per item, bounded work in flight, and
masks bitwise equal to the predictor run scan by scan."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.chest_phantom import chest_phantom
from volseg.bundle import load_bundle, save_bundle
from volseg.errors import InputError
from volseg.inference.pipeline import pipelined
from volseg.inference.predictor import Predictor, lung_mask_for
from volseg.inference.scans import ScanSource, load_scan
from volseg.inference.timing import PHASES, PhaseTimes
from volseg.models import build_model
from volseg.recipe import Recipe
from volseg.stages.predict import run_predict


def _jitter() -> None:
    time.sleep(random.random() * 0.01)


def test_pipelined_keeps_order_and_each_items_error() -> None:
    """Items come back in order whichever stage is slow; an InputError from decode, compute
    or write is that item's result and the others go on."""
    random.seed(0)

    def decode(i: int) -> int:
        _jitter()
        if i == 3:
            raise InputError("bad decode 3")
        return i * 10

    def compute(i: int, d: int) -> int:
        _jitter()
        if i == 5:
            raise InputError("bad compute 5")
        return d + 1

    def write(i: int, c: int) -> str:
        _jitter()
        if i == 7:
            raise InputError("bad write 7")
        return f"{i}:{c}"

    out = list(pipelined(list(range(10)), decode, compute, write, decoders=2, writers=2))
    assert [i for i, _ in out] == list(range(10))
    for i, result in out:
        if i in (3, 5, 7):
            assert isinstance(result, InputError) and str(result).endswith(str(i))
        else:
            assert result == f"{i}:{i * 10 + 1}"


@pytest.mark.parametrize(("decoders", "writers"), [(1, 1), (2, 2)])
def test_pipelined_bounds_the_items_in_flight(decoders: int, writers: int) -> None:
    """Decoded but not yet written: at most the decoders' look-ahead, the item being
    computed and the writers' queue (memory stays a few scans whatever the job's size)."""
    alive: set[int] = set()
    most = 0
    lock = threading.Lock()

    def decode(i: int) -> int:
        nonlocal most
        with lock:
            alive.add(i)
            most = max(most, len(alive))
        time.sleep(0.002)
        return i

    def write(i: int, c: int) -> int:
        time.sleep(0.01)  # a slow writer: the pipeline must wait for it, not pile up
        with lock:
            alive.discard(i)
        return c

    out = list(
        pipelined(range(12), decode, lambda i, d: d, write, decoders=decoders, writers=writers)
    )
    assert [r for _, r in out] == list(range(12))
    assert most <= decoders + writers + 1


def test_pipelined_stops_on_other_errors_and_cancels_queued_work() -> None:
    written: list[int] = []

    def compute(i: int, d: int) -> int:
        if i == 2:
            raise RuntimeError("a bug, not a bad input")
        return d

    def write(i: int, c: int) -> int:
        written.append(i)
        return c

    with pytest.raises(RuntimeError, match="a bug"):
        list(pipelined(range(10), lambda i: i, compute, write))
    assert set(written) <= {0, 1}  # nothing after the failing item is written


SPACING = (2.8, 2.8, 16.0)


def _scans(folder: Path, count: int) -> list[Path]:
    """Small chest phantoms of different sizes, on a grid the bundle resamples."""
    folder.mkdir(parents=True)
    files = []
    for i in range(count):
        hu, _, _ = chest_phantom(SPACING, (100 - 4 * i, 80, 18), seed=i)
        files.append(folder / f"chest{i}.nii.gz")
        nib.save(nib.Nifti1Image(hu.astype(np.int16), np.diag([*SPACING, 1.0])), files[-1])
    return files


@pytest.fixture()
def unet_bundle(tmp_path: Path) -> Path:
    """A randomly initialised small UNet3D bundle (seeded): real float arithmetic, many
    voxels near the threshold, so any change in the computation shows in the masks."""
    torch.manual_seed(0)
    params = {"filters": [4, 8, 16], "strides": [[2, 2, 1], [2, 2, 2]]}
    return save_bundle(
        tmp_path / "bundle" / "model.pt",
        build_model("unet3d", **params),
        "unet3d",
        params,
        Recipe((4.0, 4.0, 8.0), (-1000, 400), (32, 32, 16)),
        {"min_component_mm3": 0},
    )


def test_only_device_spans_wait_for_the_device() -> None:
    """A span synchronises with the device unless it is CPU work of another thread
    (``on_device=False``: clean-up and files in the writer), which must not wait for the
    next scan's kernels; both are charged to their phase."""
    from volseg.inference.timing import span

    calls: list[str] = []
    times = PhaseTimes(sync=lambda: calls.append("sync"))
    with span(times, "network"):
        pass
    with span(times, "write", on_device=False):
        pass
    assert calls == ["sync"]
    assert times.counts["network"] == 1 and times.counts["write"] == 1
    with span(None, "write", on_device=False):  # timing off: nothing at all
        pass


def test_pipelined_predict_masks_equal_the_sequential_predictor(
    unet_bundle: Path, tmp_path: Path
) -> None:
    """``run_predict`` (decode ahead, write behind, several scans) writes masks and
    probabilities bitwise equal to the predictor run on each scan alone, one at a time."""
    files = _scans(tmp_path / "in", 3)
    times = PhaseTimes()
    run_predict(unet_bundle, files, tmp_path / "out", write_prob=True, timings=times)
    predictor = Predictor.from_bundle(load_bundle(unet_bundle, torch.device("cpu")))
    for f in files:
        scan = load_scan(ScanSource(f))
        alone = predictor.predict(
            scan.array, scan.affine, lung_mask_for(scan.array, scan.affine).mask
        )
        sid = scan.id
        mask = np.asarray(nib.load(tmp_path / "out" / f"{sid}_mask.nii.gz").dataobj)
        prob = np.asarray(nib.load(tmp_path / "out" / f"{sid}_prob.nii.gz").dataobj)
        assert 0 < alone.mask.sum() < alone.mask.size  # a mask worth comparing
        np.testing.assert_array_equal(mask, alone.mask)
        np.testing.assert_array_equal(prob, alone.probability)
    assert set(times.seconds) == set(PHASES)
    assert all(times.counts[p] >= 3 for p in PHASES)  # every phase timed for every scan


def test_decoder_processes_give_the_same_outputs_and_errors(
    unet_bundle: Path, tmp_path: Path
) -> None:
    """``decode_workers=1`` (decode and lung masks in a spawned worker process) writes the
    masks and JSON of the thread decoder, times every phase, and a scan that fails to
    decode there is reported by name while the others are predicted."""
    files = _scans(tmp_path / "in", 2)
    bad = tmp_path / "in" / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.int16), np.diag([*SPACING, 1.0])), bad)
    inputs = [files[0], bad, files[1]]
    outs = {}
    for workers in (0, 1):
        times = PhaseTimes()
        out = tmp_path / f"out{workers}"
        with pytest.raises(InputError, match="blank"):
            run_predict(unet_bundle, inputs, out, decode_workers=workers, timings=times)
        outs[workers] = out
        assert all(times.counts[p] >= 2 for p in PHASES)
    for f in files:
        sid = f.name.replace(".nii.gz", "")
        masks = [np.asarray(nib.load(o / f"{sid}_mask.nii.gz").dataobj) for o in outs.values()]
        np.testing.assert_array_equal(*masks)
        reports = [(o / f"{sid}.json").read_text().replace(str(o), "") for o in outs.values()]
        assert reports[0] == reports[1]
    summaries = [(o / "summary.csv").read_text().splitlines() for o in outs.values()]
    assert [line.split(",")[0] for line in summaries[1]] == [
        "id",
        files[0].name[:-7],
        "blank",
        files[1].name[:-7],
    ]
    with pytest.raises(InputError, match="decode-workers"):
        run_predict(unet_bundle, files, tmp_path / "x", decode_workers=-1)
