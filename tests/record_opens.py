"""Run ``volseg`` and list every file it opens into a file: one line per open, the path,
a tab, and the volseg modules on the call stack (innermost first, comma-separated).

``python tests/record_opens.py OUT.txt <volseg arguments>``. Uses Python's audit hooks (the
``open`` event fires for ``open``, ``io.open``, ``os.open`` and the readers built on them:
nibabel, gzip, numpy, torch), so the leakage test sees what a stage really read and which
code read it.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any


def main(argv: list[str]) -> int:
    out, args = argv[0], argv[1:]
    opened: list[str] = []
    recording = [True]

    def callers() -> str:
        frame, names = sys._getframe(2), []
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if name.startswith("volseg") and (not names or names[-1] != name):
                names.append(name)
            frame = frame.f_back
        return ",".join(names)

    def hook(event: str, event_args: tuple[Any, ...]) -> None:
        if recording[0] and event == "open" and isinstance(event_args[0], str | bytes):
            path = event_args[0]
            path = path.decode() if isinstance(path, bytes) else path
            opened.append(f"{path}\t{callers()}")

    def dump() -> None:
        recording[0] = False
        with open(out, "w", encoding="utf-8") as fh:
            fh.write("\n".join(opened) + "\n")

    sys.addaudithook(hook)
    atexit.register(dump)
    from volseg.cli import main as volseg_main

    return volseg_main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
