"""Mount the union and serve it until it is unmounted (pyfuse3 init/main/close, fuse options, signals).

`run()` is the one entry point the command line uses. It prepares the work dir (takes the in-use
lock, removes leftovers of an interrupted copy-up), mounts, calls `on_mounted()` once the kernel
mount exists, and serves until `fusermount3 -u`, SIGINT or SIGTERM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .config import MountOptions, UnionConfig


def run(
    cfg: UnionConfig,
    opts: MountOptions,
    mountpoint: Path,
    *,
    on_mounted: Callable[[], None] | None = None,
) -> None:
    """Mount `cfg` at `mountpoint` and serve until unmounted or signalled.

    `cfg` must have been through `config.validate()`. Raises UsageError (one line) when the mount
    cannot be made (mountpoint missing, already mounted, layers in use by another strata mount).
    """
    raise NotImplementedError
