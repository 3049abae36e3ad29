"""Where ``volseg predict``'s time goes: seconds per phase, summed over scans and threads.

Off unless a :class:`PhaseTimes` is passed (``run_predict(..., timings=...)``, the predict
benchmark): a span is two ``perf_counter`` calls and a lock, plus a CUDA synchronise when
``sync`` is set so that asynchronous kernels are charged to the phase that launched them.
Phases run in several threads at once (decode ahead, write behind), so the phases' sum is
the work done, not the wall time. Only spans of work the device's thread launches
synchronise; CPU work in the writer threads passes ``on_device=False``, so that it does not
wait for the next scan's kernels.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

PHASES = ("decode", "lungs", "preprocess", "network", "postprocess", "write")
"""decode: file to HU array; lungs: lung mask, its QC and the out-of-distribution features;
preprocess: resampling, body crop, HU window; network: the sliding windows (all flips);
postprocess: back to the native grid, threshold, cleaning, gate; write: quantification and
the scan's files."""


class PhaseTimes:
    """Seconds and span counts per phase; safe to share between threads."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.counts: dict[str, int] = dict.fromkeys(PHASES, 0)
        self.sync = sync
        self._lock = threading.Lock()

    def add(self, phase: str, seconds: float) -> None:
        """Charge ``seconds`` measured elsewhere (another process) to ``phase``."""
        with self._lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
            self.counts[phase] = self.counts.get(phase, 0) + 1

    @contextlib.contextmanager
    def span(self, phase: str, *, on_device: bool = True) -> Iterator[None]:
        """Charge the block's wall time to ``phase`` (after the device's kernels when
        ``on_device`` and ``sync`` is set)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if on_device and self.sync is not None:
                self.sync()
            self.add(phase, time.perf_counter() - start)


def span(
    times: PhaseTimes | None, phase: str, *, on_device: bool = True
) -> contextlib.AbstractContextManager[None]:
    """``times.span(phase)``, or nothing at all when timing is off."""
    return contextlib.nullcontext() if times is None else times.span(phase, on_device=on_device)
