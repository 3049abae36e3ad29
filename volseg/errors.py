"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations


class VolsegError(Exception):
    """A problem with the user's input (file, folder, config key), not a bug in volseg."""


class InputError(VolsegError):
    """An input file or folder is missing, unreadable or inconsistent."""


class ConfigError(VolsegError):
    """A configuration file or override is invalid."""


class NotBuiltError(VolsegError):
    """A stage that has not been implemented yet (exits non-zero, never faked)."""


def one_line(text: str) -> str:
    """``text`` on one line: its non-empty lines stripped and joined with ``"; "``."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def cause_text(exc: BaseException, limit: int = 200) -> str:
    """The first line of the innermost cause of ``exc``, for a one-line message.

    Libraries wrap errors (MONAI: "applying transform <object at 0x...>"); the innermost
    ``__cause__`` says what actually went wrong. Falls back to the exception's type name.
    """
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def os_error_message(exc: OSError) -> str:
    """``PATH: cause`` for an OS error (permission, disk full, a file where a folder goes)."""
    cause = exc.strerror or cause_text(exc)
    if exc.filename is None:
        return one_line(cause)
    if exc.filename2 is not None:
        return one_line(f"{exc.filename} -> {exc.filename2}: {cause}")
    return one_line(f"{exc.filename}: {cause}")


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_error_text(exc: BaseException) -> str:
    """The informative line of a failed ``torch.load`` (torch puts advice before the cause)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    informative = [ln for ln in lines if not ln.startswith(_TORCH_ADVICE)]
    for line in informative:
        if "Unsupported" in line or "error" in line.lower() and not line.endswith(":"):
            return line[:200]
    return informative[0][:200] if informative else type(exc).__name__
