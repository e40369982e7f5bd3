"""Mount the union and serve it until it is unmounted (pyfuse3 init/main/close, options, signals).

`run()` is the one entry point the command line uses. It prepares the work dir (takes the in-use
lock, removes leftovers of an interrupted copy-up), mounts, calls `on_mounted()` once the kernel
mount exists, and serves until `fusermount3 -u`, SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pyfuse3
import trio

from .config import MountOptions, Passthrough, UnionConfig
from .core import UnionFS
from .errors import UsageError
from .ops import FEATURES, UnionOperations

log = logging.getLogger(__name__)


def fuse_options(cfg: UnionConfig, opts: MountOptions) -> set[str]:
    """The option set handed to libfuse for this mount."""
    options = {f"fsname={opts.fsname}"}
    if not any(o.startswith("subtype=") for o in opts.extra):
        options.add("subtype=strata")
    if opts.default_permissions:
        options.add("default_permissions")
    if opts.allow_other:
        options.add("allow_other")
    if opts.read_only or cfg.read_only:
        options.add("ro")  # the kernel answers EROFS itself, without asking us
    if opts.debug:
        options.add("debug")
    options.update(o for o in opts.extra if o not in ("rw",) or not cfg.read_only)
    return options


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
    os.umask(0)  # modes come from the requests; the upper fs still applies default ACLs
    _raise_fd_limit()
    try:
        fs = UnionFS(cfg)
    except OSError as exc:
        raise UsageError(f"cannot open layers: {exc}") from None
    try:
        try:
            ops = UnionOperations(fs, passthrough=passthrough_wanted(opts.passthrough))
            pyfuse3.init(ops, os.fspath(mountpoint), fuse_options(cfg, opts))
        except RuntimeError as exc:
            raise UsageError(f"cannot mount on {mountpoint}: {exc}") from None
        if FEATURES.spin:
            pyfuse3.set_spin(opts.spin_us)
        clean = False
        try:
            if on_mounted is not None:
                on_mounted()
            trio.run(_serve)
            clean = True
        finally:
            pyfuse3.close(unmount=True)
            log.debug("unmounted %s (clean=%s)", mountpoint, clean)
    finally:
        fs.close()


def passthrough_wanted(mode: Passthrough) -> bool:
    """Whether to ask the kernel for FUSE passthrough: `passthrough=auto` asks when nothing
    known before the mount rules it out, `on` raises UsageError naming what does, `off` never
    asks. Whether the kernel grants it is known only at FUSE_INIT (`UnionOperations`).

    `STRATA_PASSTHROUGH=on|off` in the environment replaces `auto` (not an explicit option):
    for test passes and A/B runs of `strata run`, whose mounts take no `-o`."""
    if mode is Passthrough.AUTO:
        with contextlib.suppress(ValueError):
            mode = Passthrough(os.environ.get("STRATA_PASSTHROUGH", "auto"))
    if mode is Passthrough.OFF:
        return False
    why = passthrough_unavailable()
    if why is not None and mode is Passthrough.ON:
        raise UsageError(f"passthrough=on: {why}")
    log.debug("passthrough: %s", why or "asked for")
    return why is None


def passthrough_unavailable() -> str | None:
    """Why this daemon cannot use FUSE passthrough, or None. The kernel lets only a daemon with
    CAP_SYS_ADMIN in the initial user namespace register backing files (so rootless mounts, and
    mounts made in a container's user namespace, cannot), and has it from 6.9 on."""
    if not FEATURES.passthrough:
        return "this pyfuse3 has no FUSE passthrough (scripts/setup.sh builds one that has)"
    release = os.uname().release
    version = tuple(int(n) for n in re.findall(r"\d+", release)[:2])
    if version < (6, 9):
        return f"kernel {release} has no FUSE passthrough (it came in 6.9)"
    if not _initial_user_namespace() or not effective_capabilities() & (1 << _CAP_SYS_ADMIN):
        return "FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace (root)"
    return None


_CAP_SYS_ADMIN: Final = 21


def effective_capabilities(pid: int | str = "self") -> int:
    """The effective capability set of process `pid` (CapEff in /proc/PID/status); 0 when
    the line is missing. Also the mount server's check of its clients (strata.mountd)."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _initial_user_namespace() -> bool:
    """The initial user namespace maps all 2^32 ids onto themselves; any other maps fewer."""
    with open("/proc/self/uid_map", "rb") as uid_map:
        return uid_map.read().split() == [b"0", b"0", b"4294967295"]


def _raise_fd_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one: the core keeps thousands of fds open (its
    directory fd cache, an fd per recently used file, one per nameless file the kernel holds),
    more than Debian's default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await _serve_requests()
        nursery.cancel_scope.cancel()


def _is_connection_abort(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ECONNABORTED


async def _serve_requests() -> None:
    """pyfuse3.main(), which also ends, without an error of ours, when the kernel aborted the
    connection: an unmount does that while requests are still queued (say the RELEASEs of
    hundreds of files closed just before it), and so does writing to its `abort` file in
    /sys/fs/fuse/connections. Either way the mount is gone."""
    try:
        await pyfuse3.main()
    except BaseExceptionGroup as group:
        if group.split(_is_connection_abort)[1] is not None:
            raise
        log.info("the kernel ended the FUSE connection")
    except OSError as exc:
        if not _is_connection_abort(exc):
            raise
        log.info("the kernel ended the FUSE connection")


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("got signal %d, unmounting", signum)
            pyfuse3.terminate()
            return
