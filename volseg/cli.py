"""The ``volseg`` command line: one entry point, one subcommand per stage.

Each subcommand lives in ``volseg/commands/<name>.py`` with ``HELP``, ``add_arguments`` and
``run``. Those modules import nothing heavy at top level, so ``volseg --help`` is fast;
torch and MONAI are imported inside ``run``. User errors (:class:`VolsegError`) become one
line on stderr and exit code 2; ``--debug`` shows the traceback instead. OS errors
(permission denied, disk full, a file where a folder belongs) are reported the same way,
naming the path and the cause. Argument errors are one line too, with a did-you-mean for a
mistyped choice.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from typing import NoReturn

from volseg import __version__
from volseg.errors import NotBuiltError, VolsegError, one_line, os_error_message
from volseg.utils import did_you_mean

# Order is the order shown in --help: data tools, then the pipeline stages, then utilities.
COMMANDS: tuple[str, ...] = (
    "synth",
    "check_data",
    "lungs",
    "prepare",
    "gan",
    "pretrain",
    "finetune",
    "predict",
    "evaluate",
    "run",
    "study",
    "models",
)

EXIT_USER_ERROR = 2
EXIT_NOT_BUILT = 3


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)$")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {_with_suggestion(message)}\n")


def _with_suggestion(message: str) -> str:
    """argparse's invalid-choice message with a did-you-mean and the choices listed plainly."""
    match = _INVALID_CHOICE.search(message)
    if match is None:
        return one_line(message)
    given = match.group(1)
    choices = re.findall(r"'([^']*)'", match.group(2))
    hint = did_you_mean(given, choices)
    head = message[: match.start()]
    return f"{head}invalid choice '{given}'{hint}; choose from {', '.join(choices)}"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="volseg",
        description="Few-label 3D segmentation of COVID-19 lung lesions in chest CT.",
    )
    parser.add_argument("--version", action="version", version=f"volseg {__version__}")
    common = OneLineParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    common.add_argument("-v", "--verbose", action="store_true", help="debug-level logging")
    common.add_argument(
        "--no-progress", action="store_true", help="no progress bars (also off when not a TTY)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"volseg.commands.{name}")
        cmd = sub.add_parser(
            name.replace("_", "-"),
            help=module.HELP.replace("%", "%%"),  # argparse %-formats help strings
            description=getattr(module, "DESCRIPTION", module.HELP),
            parents=[common],
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


QUIET_LIBRARIES = ("highdicom",)
"""Libraries whose INFO lines are their own bookkeeping (highdicom logs nine per DICOM SEG
written): shown with ``-v`` only."""


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; only rank 0 logs at INFO under torchrun."""
    import os

    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    setup_logging(args.verbose)
    if args.no_progress or not sys.stderr.isatty():
        import os

        os.environ["VOLSEG_NO_PROGRESS"] = "1"
    try:
        return int(args._module.run(args) or 0)
    except NotBuiltError as exc:
        if args.debug:
            raise
        print(f"volseg {args.command}: {exc}", file=sys.stderr)
        return EXIT_NOT_BUILT
    except VolsegError as exc:
        if args.debug:
            raise
        print(f"volseg {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # permissions, disk full, a file where a folder belongs
        if args.debug:
            raise
        print(f"volseg {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"volseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
