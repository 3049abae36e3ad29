"""Run ``volseg`` and SIGKILL it right after a stage's N-th ``checkpoint_last.pt``.

``python tests/kill_after_checkpoint.py STAGE N <volseg arguments>``: a crash at a known
point, without polling for files or racing the training loop. Used by the resume tests.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    stage, kill_at, args = argv[0], int(argv[1]), argv[2:]
    from volseg.engine import checkpoint as ckpt_io

    save, saved = ckpt_io.save_checkpoint, [0]

    def save_then_maybe_die(path: Any, payload: Any) -> None:
        save(path, payload)
        path = Path(path)
        if path.name == ckpt_io.LAST and path.parent.name == stage:
            saved[0] += 1
            if saved[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    ckpt_io.save_checkpoint = save_then_maybe_die
    from volseg.cli import main as volseg_main

    return volseg_main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
