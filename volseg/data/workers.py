"""Per-study work (dataset check, lung masks, cache, synthesis) in worker processes,
memory-bounded.

``prepare`` decodes every study several times; at MosMed scale (1,110 studies) that is the
wait, and each study is independent. :func:`map_ordered` runs one function per item in a
pool of processes and yields the results in the items' order (so logs, errors and outputs
do not depend on scheduling). :func:`worker_count` picks how many processes: the request,
or, when unset, as many as there are cores and as fit in the memory available, at
:func:`study_peak_bytes` each.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

PROCESS_BYTES = 450e6
"""Resident memory of a worker before it decodes a study (Python, numpy, torch, SciPy)."""
BYTES_PER_VOXEL = 60.0
"""Peak memory per voxel of one study through check, lung mask and cache entry (measured
with ``bench/prepare_bench.py``: the float32 copies, the lung search on its block grid and
the working-grid resampling)."""
MEMORY_SHARE = 0.8
"""Share of the available memory the workers may use together."""


def study_peak_bytes(voxels: int, bytes_per_voxel: float = BYTES_PER_VOXEL) -> float:
    """Estimated peak resident memory of one worker on a study of ``voxels`` voxels, at
    ``bytes_per_voxel`` (default: prepare's check, lung mask and cache entry)."""
    return PROCESS_BYTES + bytes_per_voxel * voxels


def available_memory_bytes() -> float | None:
    """``MemAvailable`` from /proc/meminfo (Linux), else None (no memory bound)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def worker_count(requested: int | None, tasks: int | None, peak_bytes: float) -> int:
    """Processes to use: ``requested`` (0 = this process), or when None the cores, bounded
    by the available memory at ``peak_bytes`` per worker and by the number of ``tasks``
    (None: not known yet). Returns 0 when one process would do, and in a daemonic process."""
    import multiprocessing

    if (tasks is not None and tasks < 2) or multiprocessing.current_process().daemon:
        return 0  # a daemonic process (a DataLoader worker, say) may not start children
    if requested is not None:
        return requested if tasks is None else min(requested, tasks)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = cores or 1 if tasks is None else min(cores or 1, tasks)
    memory = available_memory_bytes()
    if memory is not None and peak_bytes > 0:
        count = min(count, max(1, int(memory * MEMORY_SHARE // peak_bytes)))
    return count if count > 1 else 0


def workers_for(requested: int | None, images: Sequence[str | os.PathLike]) -> int:
    """:func:`worker_count` for per-study work on the NIfTI ``images``, the memory bound set
    by the largest of them (read from their headers)."""
    if len(images) < 2 or requested is not None:
        return worker_count(requested, len(images), 0.0)
    from volseg.io import load_nifti

    voxels = max(math.prod(load_nifti(path).shape[:3]) for path in images)
    return worker_count(None, len(images), study_peak_bytes(voxels))


def map_ordered(
    fn: Callable[[T], R], items: Sequence[T], workers: int, *, uses_torch: bool = True
) -> Iterable[R]:
    """``fn`` over ``items`` in ``workers`` processes (0: in this one), results in order.

    The result has a length, so a progress bar over it knows its total. Each worker
    computes single-threaded (torch), so ``workers`` processes use about ``workers`` cores;
    ``uses_torch=False`` (work without torch) spares each worker importing it (about 1 s).
    An exception in ``fn`` is raised when its item's turn comes; the pool then shuts down
    without starting the items not yet begun.
    """
    return _Ordered(fn, list(items), workers, _single_threaded if uses_torch else None)


class _Ordered(Generic[T, R]):
    """The sized, lazily computed result of :func:`map_ordered`."""

    def __init__(
        self,
        fn: Callable[[T], R],
        items: list[T],
        workers: int,
        initializer: Callable[[], None] | None,
    ) -> None:
        self.fn, self.items, self.workers, self.initializer = fn, items, workers, initializer

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[R]:
        if self.workers <= 0 or len(self.items) < 2:
            yield from map(self.fn, self.items)
            return
        from concurrent.futures import ProcessPoolExecutor

        log.info("%d items in %d worker processes", len(self.items), self.workers)
        # The platform's default start method, as torch's DataLoader uses (fork on Linux).
        pool = ProcessPoolExecutor(max_workers=self.workers, initializer=self.initializer)
        try:
            futures = [pool.submit(self.fn, item) for item in self.items]
            for future in futures:
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)
