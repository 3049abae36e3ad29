"""`volseg study` (not built yet: issue #6)."""

from __future__ import annotations

import argparse

from volseg.commands._common import add_config_arguments

HELP = "study stage (not built yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from volseg.commands._common import load_config_from_args
    from volseg.errors import NotBuiltError

    load_config_from_args(args)  # validate the config even before the stage exists
    raise NotBuiltError("this stage is not built yet (issue #6)")
