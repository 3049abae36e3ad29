"""CLI: fast help listing every stage, user errors as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

from volseg.cli import COMMANDS, main

STAGES = [
    "synth",
    "check-data",
    "lungs",
    "prepare",
    "gan",
    "pretrain",
    "finetune",
    "predict",
    "evaluate",
    "run",
]


def test_help_lists_every_stage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "volseg", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for stage in STAGES:
        assert stage in out


def test_help_does_not_import_torch() -> None:
    code = "import sys; from volseg.cli import build_parser; build_parser(); print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_config_error_is_one_line_exit_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: {epochz: 1}\n")
    if "finetune" in COMMANDS:
        rc = main(["finetune", "--config", str(bad)])
        err = capsys.readouterr().err.strip()
        assert rc == 2
        assert len(err.splitlines()) == 1
        assert "finetune.epochz" in err


def test_library_bookkeeping_is_shown_with_verbose_only() -> None:
    """highdicom's INFO lines (nine per DICOM SEG) stay out of a normal run's console;
    its warnings still show, and ``-v`` shows everything."""
    import logging

    from volseg.cli import setup_logging

    quiet, root = logging.getLogger("highdicom"), logging.getLogger()
    before = quiet.level, root.level
    try:
        root.setLevel(logging.INFO)  # as a normal run's console
        setup_logging(verbose=False)
        assert not quiet.isEnabledFor(logging.INFO) and quiet.isEnabledFor(logging.WARNING)
        setup_logging(verbose=True)
        assert quiet.isEnabledFor(logging.DEBUG)
    finally:
        quiet.setLevel(before[0])
        root.setLevel(before[1])
