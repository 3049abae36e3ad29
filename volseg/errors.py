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
