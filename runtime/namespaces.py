"""Namespaces: which ones a container gets, entering new ones, joining a running container's.

User namespaces (rootless): `enter_user_namespace()` moves the calling process into a new user
namespace (and a new mount namespace) where the caller is root. Without subordinate ids the
process writes its own one-line maps (`unshare -r` does the same); with a range in /etc/subuid and
/etc/subgid it asks the setuid helpers newuidmap/newgidmap, which must run *outside* the new
namespace, so a helper child is forked before unsharing and maps its parent.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unionfs import _sys, libc
from unionfs.errors import UsageError


class Namespace(enum.Enum):
    """A namespace kind: its clone flag and its name under /proc/PID/ns/."""

    USER = ("user", libc.CLONE_NEWUSER)
    MNT = ("mnt", libc.CLONE_NEWNS)
    PID = ("pid", libc.CLONE_NEWPID)
    UTS = ("uts", libc.CLONE_NEWUTS)
    IPC = ("ipc", libc.CLONE_NEWIPC)
    NET = ("net", libc.CLONE_NEWNET)

    def __init__(self, proc_name: str, flag: int) -> None:
        self.proc_name = proc_name
        self.flag = flag


# The order in which a joining process enters them: the user namespace first (it grants the
# capabilities the others need), the mount namespace last (after it, host paths are gone).
JOIN_ORDER: Final = (
    Namespace.USER,
    Namespace.IPC,
    Namespace.UTS,
    Namespace.NET,
    Namespace.PID,
    Namespace.MNT,
)


def flags_of(namespaces: Iterable[Namespace]) -> int:
    flags = 0
    for ns in namespaces:
        flags |= ns.flag
    return flags


def unshare(namespaces: Iterable[Namespace]) -> None:
    libc.unshare(flags_of(namespaces))


# ---------------------------------------------------------------------------------------------
# joining a running container's namespaces


def open_namespaces(pid: int, kinds: Sequence[Namespace]) -> dict[Namespace, int]:
    """Open /proc/PID/ns/* for the kinds where `pid` differs from us (joining our own is EINVAL
    for the user namespace and pointless for the others)."""
    fds: dict[Namespace, int] = {}
    try:
        for ns in kinds:
            theirs = f"/proc/{pid}/ns/{ns.proc_name}"
            if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{ns.proc_name}").st_ino:
                continue
            fds[ns] = os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def join_namespaces(pid: int, fds: dict[Namespace, int]) -> None:
    """setns() into each open namespace in JOIN_ORDER, closing the fds."""
    try:
        for ns in JOIN_ORDER:
            fd = fds.get(ns)
            if fd is not None:
                libc.setns(fd, ns.flag, what=f"/proc/{pid}/ns/{ns.proc_name}")
    finally:
        for fd in fds.values():
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# user namespaces


@dataclass(frozen=True, slots=True)
class IdRange:
    """`count` ids from `inside` in the namespace are `outside` and up on the host."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}\n"


@dataclass(frozen=True, slots=True)
class IdMap:
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    @property
    def needs_helpers(self) -> bool:
        """More than our own id: only newuidmap/newgidmap may write that."""
        return len(self.uids) > 1 or len(self.gids) > 1

    def to_json(self) -> dict[str, list[list[int]]]:
        return {
            "uids": [[r.inside, r.outside, r.count] for r in self.uids],
            "gids": [[r.inside, r.outside, r.count] for r in self.gids],
        }

    def uid_inside(self, host: int) -> int:
        """The uid a process in the namespace sees for the host uid `host`."""
        return _inside(self.uids, host)

    def gid_inside(self, host: int) -> int:
        """The gid a process in the namespace sees for the host gid `host`."""
        return _inside(self.gids, host)


OVERFLOW_ID: Final = 65534  # what a user namespace shows for an id it does not map (nobody)


def _inside(ranges: tuple[IdRange, ...], host: int) -> int:
    for r in ranges:
        if r.outside <= host < r.outside + r.count:
            return r.inside + host - r.outside
    return OVERFLOW_ID


def _subordinate_range(path: str, name: str, ident: int) -> tuple[int, int] | None:
    """The first `start, count` for user `name` (or numeric `ident`) in /etc/subuid or subgid."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (name, str(ident)):
            continue
        if fields[1].isdigit() and fields[2].isdigit() and int(fields[2]) > 0:
            return int(fields[1]), int(fields[2])
    return None


def rootless_id_map(uid: int, gid: int, user_name: str | None) -> IdMap:
    """Root in the namespace is the caller; ids 1..N come from /etc/subuid+subgid when both
    have a range for the caller and newuidmap/newgidmap are installed."""
    uids = [IdRange(0, uid, 1)]
    gids = [IdRange(0, gid, 1)]
    if user_name is not None and shutil.which("newuidmap") and shutil.which("newgidmap"):
        sub_u = _subordinate_range("/etc/subuid", user_name, uid)
        sub_g = _subordinate_range("/etc/subgid", user_name, uid)
        if sub_u is not None and sub_g is not None:
            uids.append(IdRange(1, sub_u[0], sub_u[1]))
            gids.append(IdRange(1, sub_g[0], sub_g[1]))
    return IdMap(tuple(uids), tuple(gids))


def current_user_name() -> str | None:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def enter_user_namespace(id_map: IdMap, extra: Iterable[Namespace] = (Namespace.MNT,)) -> None:
    """Unshare a user namespace (plus `extra`) in this process and install `id_map`.

    The process must be single-threaded. Afterwards it is root in the new namespace with full
    capabilities there, and can mount FUSE, proc (in a new pid namespace), tmpfs and binds.
    """
    flags = libc.CLONE_NEWUSER | flags_of(extra)
    if not id_map.needs_helpers:
        libc.unshare(flags)
        _write_own_maps(id_map)
        return
    go_r, go_w = os.pipe()
    parent = os.getpid()
    helper = os.fork()
    if helper == 0:  # pragma: no cover - child
        status = 1
        try:
            os.close(go_w)
            if os.read(go_r, 1) == b"1":
                status = _run_map_helpers(parent, id_map)
        finally:
            os._exit(status)
    os.close(go_r)
    try:
        libc.unshare(flags)
    except BaseException:
        os.close(go_w)
        os.waitpid(helper, 0)
        raise
    os.write(go_w, b"1")
    os.close(go_w)
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(0, "newuidmap/newgidmap failed to map the user namespace (see above)")


def current_id_map() -> IdMap:
    """The map of the user namespace this process is in, as /proc/self/uid_map and gid_map
    give it (the initial namespace maps everything to itself)."""

    def ranges(name: str) -> tuple[IdRange, ...]:
        with open(f"/proc/self/{name}") as f:
            return tuple(IdRange(*(int(x) for x in line.split())) for line in f if line.strip())

    return IdMap(ranges("uid_map"), ranges("gid_map"))


def enter_rootless() -> bool:
    """Enter the caller's rootless user namespace (with a mount namespace) when it is not root,
    as `buildah unshare` does: for the image commands that write, read or remove layer files
    (`load`, `pull`, `build`, `save`, `push`, `rmi`, prune). In it the user is root and its
    subordinate ids are the image's users, so a layer keeps the owners its tar names; outside
    it the user could neither chown to them nor read or remove their files. Whether it entered
    one (not when root, also root of a user namespace already); the process must be
    single-threaded. A host without unprivileged user namespaces gets one line saying so."""
    if os.geteuid() == 0:
        return False
    try:
        enter_user_namespace(rootless_id_map(os.getuid(), os.getgid(), current_user_name()))
    except OSError as e:
        raise UsageError(
            f"rootless: cannot enter a user namespace ({os.strerror(e.errno) if e.errno else e}):"
            " strata needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0,"
            " and kernel.unprivileged_userns_clone = 1 where the kernel has it) or root",
            125,
        ) from None
    return True


def _write_own_maps(id_map: IdMap) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write("".join(r.line() for r in id_map.uids))
    with open("/proc/self/gid_map", "w") as f:
        f.write("".join(r.line() for r in id_map.gids))


def _run_map_helpers(pid: int, id_map: IdMap) -> int:
    for tool, ranges in (("newuidmap", id_map.uids), ("newgidmap", id_map.gids)):
        args = [tool, str(pid)]
        for r in ranges:
            args += [str(r.inside), str(r.outside), str(r.count)]
        done = subprocess.run(args, check=False)
        if done.returncode != 0:
            return 1
    return 0


def remove_tree_in(id_map: IdMap, path: str | os.PathLike[str]) -> None:
    """rm -rf of `path` from a forked child inside the user namespace of `id_map`, where the
    files of the user's subordinate ids (written by a rootless container) are the user's to
    remove; OSError when it could not."""
    from .state import remove_tree

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            enter_user_namespace(id_map, extra=())
            remove_tree(Path(path))
            code = 0
        except BaseException as exc:
            print(f"strata: removing {path}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(f"could not remove {path}")


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the initial one."""
    return not _sys.in_initial_user_namespace()


def setgroups_allowed(pid: str = "self") -> bool:
    """Whether setgroups(2) is allowed in the user namespace of `pid` (no if "deny" was written
    there, as a process mapping only its own ids must)."""
    try:
        with open(f"/proc/{pid}/setgroups") as f:
            return f.read().strip() == "allow"
    except OSError:
        return True
