"""Progress bars that switch off with ``--no-progress``, off a TTY, and on non-zero ranks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    if os.environ.get("VOLSEG_NO_PROGRESS"):
        return False
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """Wrap an iterable in a tqdm bar when progress display is enabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress_enabled(), dynamic_ncols=True, **kwargs)
