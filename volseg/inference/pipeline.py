"""Decode ahead, compute in the caller's thread, write behind: ``volseg predict``'s engine.

On a CPU the network has the cores most of the time; decoding (gzip inflate, int16 to
float32) and writing (gzip deflate of masks and maps) are mostly C code that releases the
GIL, so threads let them overlap with the network of the neighbouring scans. ``volseg
predict`` also lung-masks and makes the lesion region in the decode step, and cleans the
mask in the write step (1.8x faster on 2 threads than on one, bench/README.md); its
``--decode-workers`` passes a process pool as ``decode_pool``, for machines with cores to
spare (on 2 cores that is slower). Memory stays bounded: at most ``decoders`` scans decoded
ahead and ``writers`` scans waiting to be written besides the one being computed.

Results come back in input order, whichever stage finishes first. An :class:`InputError`
raised by any stage is that item's result and the others go on; any other exception stops
the pipeline (queued work is cancelled, running work is waited for) and propagates.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

from volseg.errors import InputError

S = TypeVar("S")  # an input (a scan source)
D = TypeVar("D")  # what decode makes of it (a scan)
C = TypeVar("C")  # what compute makes of that (the prediction and its context)
W = TypeVar("W")  # what write returns (the summary row)


def pipelined(
    items: Sequence[S],
    decode: Callable[[S], D],
    compute: Callable[[S, D], C],
    write: Callable[[S, C], W],
    *,
    decoders: int = 1,
    writers: int = 1,
    decode_pool: Executor | None = None,
) -> Iterator[tuple[S, W | InputError]]:
    """Yield ``(item, write(item, compute(item, decode(item))))`` per item, in order, or
    ``(item, error)`` for an item whose stage raised an :class:`InputError`.

    ``decode`` and ``write`` run in pools of ``decoders`` and ``writers`` threads,
    ``compute`` in the calling thread. ``decode_pool`` replaces the decoder threads (e.g.
    a process pool of ``decoders`` workers: then ``decode`` and the items must pickle, and
    what ``decode`` returns is pickled back); it is shut down at the end.
    """
    if decoders < 1 or writers < 1:
        raise ValueError("pipelined needs at least one decoder and one writer thread")
    decode_executor = decode_pool or ThreadPoolExecutor(decoders, thread_name_prefix="decode")
    with (
        decode_executor as decode_pool,
        ThreadPoolExecutor(writers, thread_name_prefix="write") as write_pool,
    ):
        try:
            behind: deque[tuple[S, Future[W] | InputError]] = deque()
            for item, decoded in _ahead(decode_pool, decode, items, decoders):
                behind.append((item, _compute(item, decoded, compute, write, write_pool)))
                if len(behind) > writers:
                    yield _written(*behind.popleft())
            while behind:
                yield _written(*behind.popleft())
        finally:  # on an error or an abandoned iteration: drop queued work, finish running
            decode_pool.shutdown(wait=True, cancel_futures=True)
            write_pool.shutdown(wait=True, cancel_futures=True)


def _ahead(
    pool: Executor, decode: Callable[[S], D], items: Sequence[S], depth: int
) -> Iterator[tuple[S, Future[D]]]:
    """``(item, future of decode(item))`` in order, keeping ``depth`` decodes submitted
    ahead of the one handed out."""
    queue: deque[tuple[S, Future[D]]] = deque()
    for item in items:
        queue.append((item, pool.submit(decode, item)))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _compute(
    item: S,
    decoded: Future[D],
    compute: Callable[[S, D], C],
    write: Callable[[S, C], W],
    pool: Executor,
) -> Future[W] | InputError:
    """Wait for the decode, compute here, and queue the write; the error instead if one."""
    try:
        return pool.submit(write, item, compute(item, decoded.result()))
    except InputError as exc:
        return exc


def _written(item: S, pending: Future[W] | InputError) -> tuple[S, W | InputError]:
    """The item with its write's result, or with the error of whichever stage raised."""
    if isinstance(pending, InputError):
        return item, pending
    try:
        return item, pending.result()
    except InputError as exc:
        return item, exc
