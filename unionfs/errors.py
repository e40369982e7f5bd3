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
    """A layer holds what strata could not have written: a forged or broken origin or metacopy
    marker, metacopy data that is missing. Served as EIO; the union that detects it turns
    read-only (s3ql's failsafe), since writing on top of a layer it cannot make sense of could
    only make things worse, while the healthy files stay readable.

    `layer` names the layer (its path) once the union knows which one it is.
    """

    def __init__(self, problem: str, layer: str = "") -> None:
        super().__init__(errno.EIO, f"corrupt layer {layer}: {problem}" if layer else problem)
        self.problem = problem
        self.layer = layer


def fs_error(code: int, what: bytes | str = b"") -> OSError:
    """An OSError for a semantic error of the union (not one a syscall returned)."""
    if isinstance(what, bytes):
        what = os.fsdecode(what)
    return OSError(code, os.strerror(code), what)
