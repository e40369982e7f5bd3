"""`--log-opt max-size=SIZE,max-file=N`: docker's json-file rotation of a container's log.

The log's writer calls `rotate()` before it appends: when the bytes it is about to write
would take the log past `max_size`, the log becomes `LOG.1`, `LOG.1` becomes `LOG.2`, and so
on, keeping `max_file` files in all (the current one included; with 1 the log is emptied
instead), and the writer reopens the log. Readers take `log_files()`, oldest first. A record
is never split across two files. Nothing here knows the format of a record.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

_SIZE: Final = re.compile(r"(\d+)([kmg]?)b?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_log_opts(items: Iterable[str]) -> tuple[int, int]:
    """`--log-opt K=V`s: (max_size in bytes, 0 for no limit; max_file), docker's json-file
    options and errors; other options are refused."""
    max_size, max_file = 0, 1
    file_given = False
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--log-opt {item}: expected KEY=VALUE", 125)
        if key == "max-size":
            match = _SIZE.fullmatch(value)
            if value == "-1":
                max_size = 0
            elif match is None or int(match[1]) == 0:
                raise UsageError(f"--log-opt {item}: expected a size such as 10m", 125)
            else:
                max_size = int(match[1]) * _UNITS[match[2].lower()]
        elif key == "max-file":
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"--log-opt {item}: max-file cannot be less than 1", 125)
            max_file, file_given = int(value), True
        elif key in ATTRIBUTE_OPTS:
            continue  # (attribute_opts)
        else:
            raise UsageError(f"--log-opt {item}: unknown log opt '{key}' for json-file", 125)
    if file_given and not max_size:
        raise UsageError("--log-opt max-file: needs max-size (a log without a limit)", 125)
    return max_size, max_file


# the json-file options that name what `logs --details` shows with each line
ATTRIBUTE_OPTS: Final = ("labels", "labels-regex", "env", "env-regex")


def attribute_opts(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The `--log-opt labels=A,B`, `env=X,Y`, `labels-regex=RE`, `env-regex=RE` among the
    items (a regular expression that does not compile is refused); the last of each wins."""
    found: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in ATTRIBUTE_OPTS:
            continue
        if key.endswith("-regex"):
            try:
                re.compile(value)
            except re.error as e:
                raise UsageError(f"--log-opt {item}: {e}", 125) from None
        found[key] = value
    return tuple(found.items())


def rotate(path: Path, *, max_size: int, max_file: int, incoming: int) -> bool:
    """Make room for `incoming` bytes in the log at `path` (see the module doc); True when the
    log was moved or emptied, so the writer must reopen it."""
    if not max_size:
        return False
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return False
    if size == 0 or size + incoming <= max_size:
        return False
    if max_file <= 1:
        os.truncate(path, 0)
        return True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{path}.{max_file - 1}")
    for n in range(max_file - 2, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}.{n}", f"{path}.{n + 1}")
    os.rename(path, f"{path}.1")
    return True


def log_files(path: Path) -> list[Path]:
    """The log's files, oldest first: `LOG.N` ... `LOG.1`, then `LOG` (those that exist)."""
    rotated = []
    n = 1
    while os.path.exists(f"{path}.{n}"):
        rotated.append(Path(f"{path}.{n}"))
        n += 1
    current = [path] if path.exists() else []
    return [*reversed(rotated), *current]
