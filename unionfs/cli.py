"""The union's command lines: `fuse-strata` (a fuse-overlayfs drop-in), `strata mount` and
`strata umount` (the `SUBCOMMANDS` this package contributes to `strata`), and `python -m unionfs`
(= `strata mount`).

Why the code is shaped this way:

- Start-up stays fast: this module imports only the standard library and the union's small
  modules (options, config, mountinfo). `mount` (trio, pyfuse3, the union core) is imported in the
  process that serves the mount, after the fork, so `--help`, bad input and the waiting parent
  never pay for it.
- Every check that can fail on bad input runs in the parent before anything is mounted or
  written (`config.validate()`, the mount point checks), so a mistake costs one line on stderr
  and leaves the layers untouched.
- Daemonizing follows what container engines and mount(8) rely on with fuse-overlayfs: the
  parent exits 0 only once the mount answers (statfs shows FUSE), and the daemon has by then
  let go of stdin/stdout/stderr, because engines read the helper's stderr until EOF.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn

from . import __version__, libc, startup
from .command import Runner, Subcommand, describe_os_error, dispatch
from .config import MountOptions, UnionConfig, validate
from .errors import UsageError
from .mountinfo import (
    FUSE_SUPER_MAGIC,
    UMOUNT_TIMEOUT,
    fuse_connection_held,
    is_fuse,
    mounts_at,
    resolve_parent,
    unmount,
)
from .options import (
    FUSE_STRATA_HELP,
    MountRequest,
    add_mount_arguments,
    fuse_request,
    scan_fuse_argv,
    strata_mount_request,
)

FUSE_STRATA: Final = "fuse-strata"

log = logging.getLogger(__name__)


def fuse_strata_main(argv: list[str] | None = None) -> int:
    """`fuse-strata`: mount like fuse-overlayfs (engines' mount_program, mount.fuse3, fstab)."""
    args = sys.argv[1:] if argv is None else argv
    runner = Runner(FUSE_STRATA)
    return runner.run(lambda: _fuse_strata(runner, args))


def _fuse_strata(runner: Runner, argv: Sequence[str]) -> int:
    scanned = scan_fuse_argv(argv)
    runner.debug = scanned.debug
    if scanned.show_help:
        sys.stdout.write(FUSE_STRATA_HELP)
        return 0
    if scanned.show_version:
        print(f"{FUSE_STRATA}: version {__version__} (strata)")
        return 0
    request = fuse_request(scanned, os.geteuid())
    runner.debug = request.opts.debug
    return mount_request(request, prog=FUSE_STRATA)


def _run_mount(args: argparse.Namespace, runner: Runner) -> int:
    runner.debug = bool(args.debug)
    request = strata_mount_request(args, os.geteuid())
    runner.debug = request.opts.debug
    return mount_request(request, prog="strata")


def _add_umount_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-z", "--lazy", action="store_true", help="detach now even if busy (umount -l)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=UMOUNT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the daemon to let go (default {UMOUNT_TIMEOUT:g})",
    )
    parser.add_argument("mountpoint", metavar="MNT", help="the mounted union")


def _run_umount(args: argparse.Namespace, runner: Runner) -> int:
    unmount(Path(args.mountpoint), lazy=bool(args.lazy), timeout=float(args.timeout))
    return 0


SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    Subcommand("mount", "mount a union (daemonizes unless -f)", add_mount_arguments, _run_mount),
    Subcommand(
        "umount",
        "unmount a union and wait until its daemon has let go of the layers",
        _add_umount_arguments,
        _run_umount,
    ),
)


def mount_main(argv: list[str] | None = None) -> int:
    """`python -m unionfs ...` is `strata mount ...`."""
    args = sys.argv[1:] if argv is None else argv
    return dispatch("strata", "mount a union", __version__, SUBCOMMANDS, ["mount", *args])


# ---------------------------------------------------------------------------------------------
# mounting


def mount_request(request: MountRequest, *, prog: str) -> int:
    """Validate everything, then serve in the foreground or daemonize; the exit status."""
    _configure_logging(request.opts.debug)
    cfg = validate(request.cfg)
    mountpoint = check_mountpoint(request.mountpoint)
    check_mountpoint_outside_layers(cfg, mountpoint)
    if request.foreground:
        from . import mount  # trio, pyfuse3 and the core: only now

        mount.run(cfg, request.opts, mountpoint)
        return 0
    return _daemonize(cfg, request.opts, mountpoint, prog=prog)


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s:%(name)s:%(message)s",
    )


def check_mountpoint(path: Path) -> Path:
    """The resolved mount point, or UsageError: missing, not a directory, already mounted.

    mountinfo is consulted before stat(): stat() of a mount whose daemon hangs would hang too.
    """
    _refuse_if_mounted(path, resolve_parent(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path}: does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(_dead_mount_message(path)) from None
        raise UsageError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {path}: not a directory")
    resolved = Path(os.path.realpath(path))
    _refuse_if_mounted(path, resolved)
    return resolved


def _refuse_if_mounted(path: Path, resolved: Path) -> None:
    mounted = mounts_at(resolved)
    if not mounted:
        return
    top = mounted[-1]
    if is_fuse(top) and fuse_connection_held(top.minor) is False:
        raise UsageError(_dead_mount_message(path))
    raise UsageError(f"mountpoint {path}: already mounted ({top.fstype} from {top.source})")


def _dead_mount_message(path: Path) -> str:
    return (
        f"mountpoint {path}: a dead FUSE mount (transport endpoint is not connected);"
        f" remove it with 'fusermount3 -u {path}' or 'strata umount {path}'"
    )


def check_mountpoint_outside_layers(cfg: UnionConfig, mountpoint: Path) -> None:
    """Refuse a mount point at or below a layer: the union would contain itself, and a lookup
    through the layer would re-enter the daemon that is serving it (a deadlock)."""
    layers = [*cfg.lowers, *(p for p in (cfg.upper, cfg.work) if p is not None)]
    for layer in layers:
        if mountpoint == layer or layer in mountpoint.parents:
            raise UsageError(f"mountpoint {mountpoint}: inside the layer {layer}")


def _daemonize(cfg: UnionConfig, opts: MountOptions, mountpoint: Path, *, prog: str) -> int:
    """Fork; the child serves the mount, the parent waits until it is live and exits.

    The child reports over a pipe (`unionfs.startup`): `ok` once mounted (then it detaches
    stdio), or an exit status and message on failure. EOF without a report means it died.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _serve_as_daemon(cfg, opts, mountpoint, write_fd)
    os.close(write_fd)
    try:
        line = startup.read_report(read_fd)
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        raise
    failure = None if line is None else startup.parse_report(line)
    if line is not None and failure is None:
        _check_live(mountpoint, pid)
        return 0
    _, status = os.waitpid(pid, 0)
    if failure is not None:
        raise UsageError(failure.message.strip(), failure.code)
    raise UsageError(f"the mount daemon died without a word ({_describe_status(status)})", 1)


def _serve_as_daemon(
    cfg: UnionConfig, opts: MountOptions, mountpoint: Path, report_fd: int
) -> NoReturn:
    """The daemon child: its own session, `/` as cwd, serve until unmounted, never return."""
    report = startup.StartupReport(report_fd)

    def on_mounted() -> None:
        report.ok()
        _detach_stdio()

    status = 1
    try:
        os.setsid()
        os.chdir("/")
        from . import mount

        mount.run(cfg, opts, mountpoint, on_mounted=on_mounted)
        status = 0
    except UsageError as exc:
        status = exc.exit_code
        report.fail(status, str(exc))
    except OSError as exc:
        report.fail(1, describe_os_error(exc))
    except BaseException as exc:  # the daemon has nobody else to tell; then it must exit
        report.fail(1, f"cannot mount: {type(exc).__name__}: {exc}")
    finally:
        report.fail(1, "the mount daemon stopped before mounting")
        os._exit(status)


def _detach_stdio() -> None:
    """Point fds 0-2 at /dev/null: engines read our stderr until EOF, so the daemon must let go."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(sig).name}"
        return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _check_live(mountpoint: Path, pid: int) -> None:
    """After the daemon's `ok`: a FUSE mount is at the mount point and answers statfs."""
    mounted = mounts_at(mountpoint)
    if not mounted or not mounted[-1].fstype.startswith("fuse"):
        raise UsageError(
            f"the daemon (pid {pid}) reported success but {mountpoint} is not mounted", 1
        )
    f_type = libc.statfs_type(mountpoint)  # answered by the daemon: it is serving
    if f_type != FUSE_SUPER_MAGIC:
        raise UsageError(f"{mountpoint}: not a FUSE mount after mounting (f_type {f_type:#x})", 1)
