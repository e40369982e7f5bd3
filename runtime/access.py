"""Work on a container's files from the host, with `/` being the container's root filesystem.

`strata cp` reads and writes a container's files. Resolving paths from the host below the
container's rootfs would follow the container's symlinks out of it (an absolute link is the
host's path), so the work runs in a forked child whose root is the container's:

- a running container: the child joins the container's mount namespace (and its user namespace,
  rootless) and chroots to PID 1's root, so it sees what the container sees, volumes included;
- a stopped (or created) container: its union is mounted for the duration, as at its start but
  without volumes, with the state root's lock held so that it cannot start meanwhile (rootless:
  in a user and mount namespace of the child's own), and the child chroots into it.

Inside, every symlink resolves within the container (an absolute one restarts at its `/`, `..`
stops there). Before the chroot the child imports nothing more and empties `sys.path`: an import
would otherwise load Python files from the container's filesystem. The work must not look up
user or group names either (glibc's NSS would load the container's libraries).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from unionfs.errors import UsageError

from . import namespaces
from .create import id_map_of, union_config
from .namespaces import Namespace
from .rootfs import UnionRootfs
from .state import RUNNING, ContainerDir, StateRoot, process_alive


@dataclass(frozen=True, slots=True)
class Channel:
    """Two pipes between the host side and the child in the container: each side gets the
    ends it uses (`inbound` to read, `outbound` to write)."""

    inbound: int
    outbound: int


Work = Callable[[Channel], int]
Host = Callable[[Channel], None]


def run_in_rootfs(root: StateRoot, cdir: ContainerDir, work: Work, host: Host) -> int:
    """Run `work` in a child whose `/` is the container's root filesystem (see the module doc)
    and, meanwhile, `host` here; the child's exit status (`work`'s return value; 125 when it
    could not get there). The pipes are made after the union daemon is forked, so that the
    child's death closes their far ends."""
    state = cdir.effective_state()
    if state.status == RUNNING and process_alive(state.init_pid, state.init_start):
        pid1 = state.init_pid
        return _fork_with_host(lambda ch: _enter_running(cdir, pid1, lambda: work(ch)), host)
    with root.lock():
        from .monitor import reconcile

        state = reconcile(root, cdir)
        if state.status == RUNNING:
            raise UsageError(f"container {cdir.name} is starting; try again", 125)
        if cdir.config.rootless and not namespaces.in_user_namespace():
            # the holder mounts in a user namespace of its own and forks the worker
            return _fork_with_host(
                lambda ch: _mount_and_run(cdir, lambda _: work(ch), None, rootless=True), host
            )
        return _mount_and_run(cdir, work, host, rootless=False)


def _mount_and_run(cdir: ContainerDir, work: Work, host: Host | None, *, rootless: bool) -> int:
    """Mount the stopped container's union at its rootfs, run `work` chrooted into it in a
    child (and `host` here), unmount; the child's status."""
    if rootless:
        namespaces.enter_user_namespace(id_map_of(cdir.config))
    with UnionRootfs(privileged=not rootless) as rootfs:
        rootfs.mount(union_config(cdir), cdir.rootfs, log_path=cdir.sub("union.log"))
        rootfs.wait_mounted()
        rootfs_fd = os.open(cdir.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _fork_with_host(
                lambda ch: _chroot_and_run(rootfs_fd, lambda: work(ch)),
                host or (lambda _: None),
            )
        finally:
            os.close(rootfs_fd)


def _fork_with_host(child: Work, host: Host) -> int:
    """Fork `child` with its ends of two new pipes, run `host` with ours, wait for the child."""
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    pid = _fork(lambda: _closing((down_w, up_r), lambda: child(Channel(down_r, up_w))))
    os.close(down_r)
    os.close(up_w)
    try:
        host(Channel(up_r, down_w))
    except BaseException:  # (a bug, or Ctrl-C): the child must not outlive us, nor block
        _close(up_r, down_w)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait(pid)
        raise
    _close(up_r, down_w)
    return _wait(pid)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _closing(fds: tuple[int, ...], body: Callable[[], int]) -> int:
    for fd in fds:
        os.close(fd)
    return body()


def _enter_running(cdir: ContainerDir, pid1: int, work: Callable[[], int]) -> int:
    kinds = [Namespace.MNT]
    if cdir.config.rootless and not namespaces.in_user_namespace():
        kinds.insert(0, Namespace.USER)
    fds = namespaces.open_namespaces(pid1, kinds)
    root_fd = os.open(f"/proc/{pid1}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    namespaces.join_namespaces(pid1, fds)
    return _chroot_and_run(root_fd, work)


def _chroot_and_run(root_fd: int, work: Callable[[], int]) -> int:
    sys.path.clear()  # nothing may be imported from the container's files from here on
    sys.path_importer_cache.clear()
    os.fchdir(root_fd)
    os.chroot(".")
    os.chdir("/")
    os.close(root_fd)
    return work()


def _fork(child: Callable[[], int]) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        _child(child)
    return pid


def _child(body: Callable[[], int]) -> NoReturn:  # pragma: no cover - child
    code = 125
    try:
        code = body()
    except UsageError as exc:
        print(f"strata: {exc}", file=sys.stderr, flush=True)
        code = exc.exit_code
    except OSError as exc:
        what = f"{exc.filename}: " if exc.filename else ""
        print(f"strata: {what}{exc.strerror or exc}", file=sys.stderr, flush=True)
    except BaseException as exc:
        print(f"strata: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
        os._exit(code)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 125
