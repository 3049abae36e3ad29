"""`volseg check-data` (not built yet)."""

from __future__ import annotations

import argparse

HELP = "check-data (not built yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from volseg.errors import NotBuiltError

    raise NotBuiltError("this command is not built yet")
