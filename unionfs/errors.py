"""The error vocabulary of strata. No pyfuse3 here: ops.py maps OSError to FUSEError."""

from __future__ import annotations

import errno
import os


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status `exit_code` (docker's
    125, "strata itself failed", unless the caller says otherwise)."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LayerCorruptError(OSError):
    """A layer holds something the union cannot make sense of (served as EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def fs_error(code: int, what: bytes | str = b"") -> OSError:
    """An OSError for a semantic error of the union (not one a syscall returned)."""
    if isinstance(what, bytes):
        what = os.fsdecode(what)
    return OSError(code, os.strerror(code), what)
