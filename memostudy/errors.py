"""User-facing errors.

A :class:`MemostudyError` is a problem with the user's input or request (a missing file, a bad
config value, a checksum mismatch). The CLI prints its message on one line and exits non-zero,
without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class MemostudyError(Exception):
    """An error the user can fix; the message says what is wrong and what to do, in one line."""


class DataError(MemostudyError):
    """Bad or missing input data (file, folder, manifest, checksum)."""


class ConfigError(MemostudyError):
    """A bad configuration value, preset name or override."""


class RunExistsError(MemostudyError):
    """A finished run is already at the output path and ``--force`` was not given."""
