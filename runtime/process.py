"""The container's command: what to run (`ProcessSpec`), as whom, and the final exec.

`exec_process()` runs inside the container (after pivot_root, or after joining a running
container's namespaces) and never returns. What fails there (no such user, no such working
directory, no such command) is reported as one line on the caller's `report` channel with the
exit status a shell would use: 125 for a bad user or working dir, 126 for a command that cannot be
run, 127 for one that does not exist. Users and groups are read from the container's own
/etc/passwd and /etc/group with a plain parser: glibc's NSS would load the host's modules.

Nothing here may import lazily: after pivot_root the host's Python library is out of reach.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, NoReturn

from unionfs import libc
from unionfs.errors import UsageError

from .images import DEFAULT_PATH

if TYPE_CHECKING:
    from .security import Confinement

_USER_PART: Final = re.compile(r"[a-zA-Z0-9_.][a-zA-Z0-9_.-]*\$?")


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """A command to run in a container: argv, final environment (K=V), working dir, user."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str = "/"
    user: str = ""
    tty: bool = False
    interactive: bool = False
    groups: tuple[str, ...] = ()  # --group-add: more supplementary groups (names or gids)


class ExecError(Exception):
    """The command could not be started; `code` is the exit status to report."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_user(spec: str) -> None:
    """Syntax of `-u USER[:GROUP]` (names or numeric ids); UsageError when malformed."""
    if not spec:
        return
    user, sep, group = spec.partition(":")
    for part, what in ((user, "user"), (group, "group")):
        if part == "" and (what == "user" or sep):
            raise UsageError(f"-u {spec}: empty {what}", 125)
        if part and not _USER_PART.fullmatch(part):
            raise UsageError(f"-u {spec}: invalid {what} {part!r}", 125)
        if part.isdigit() and int(part) >= 2**32 - 1:
            raise UsageError(f"-u {spec}: {what} id out of range", 125)


def parse_env_assignments(items: Iterable[str], *, source: str) -> list[str]:
    """`K=V` items (`-e K` takes K from our own environment, as Docker does)."""
    out = []
    for item in items:
        name, sep, _ = item.partition("=")
        if not name or "\0" in item or (not sep and "=" in name):
            raise UsageError(f"{source} {item!r}: expected NAME=VALUE", 125)
        if not sep:
            if name in os.environ:
                out.append(f"{name}={os.environ[name]}")
            continue
        out.append(item)
    return out


def read_env_file(path: str) -> list[str]:
    """An --env-file: NAME=VALUE per line; blank lines and `#` comments are skipped."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--env-file {path}: {exc.strerror}", 125) from None
    items = [line.strip() for line in lines]
    return parse_env_assignments(
        (i for i in items if i and not i.startswith("#")), source=f"--env-file {path}:"
    )


def merge_env(*layers: Iterable[str]) -> tuple[str, ...]:
    """Later K=V override earlier ones; the order of first appearance is kept; PATH defaults."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            name, _, value = item.partition("=")
            merged[name] = value
    merged.setdefault("PATH", DEFAULT_PATH)
    return tuple(f"{k}={v}" for k, v in merged.items())


# ---------------------------------------------------------------------------------------------
# users and groups, from the container's files


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, errors="replace") as f:
            return [line.split(":") for line in f.read().splitlines() if line and line[0] != "#"]
    except OSError:
        return []


def resolve_user(spec: str, *, etc: str = "/etc") -> Identity:
    """`USER[:GROUP]` (names or ids) against `etc`/passwd and `etc`/group (the container's: this
    runs after pivot_root). A numeric user missing from passwd gets gid 0 and home `/`."""
    user, _, group = spec.partition(":")
    passwd = [e for e in _read_db(f"{etc}/passwd") if len(e) >= 7]
    groups_db = [e for e in _read_db(f"{etc}/group") if len(e) >= 4]
    entry = None
    if not user:
        user = "0"
    for e in passwd:
        if e[0] == user or (user.isdigit() and e[2] == user):
            entry = e
            break
    if entry is None and not user.isdigit():
        raise ExecError(125, f"unable to find user {user}: no matching entries in passwd file")
    uid = int(user) if entry is None else int(entry[2])
    gid = 0 if entry is None or not entry[3].isdigit() else int(entry[3])
    home = "/" if entry is None else entry[5] or "/"
    if group:
        match = next((g for g in groups_db if g[0] == group or g[2] == group), None)
        if match is None and not group.isdigit():
            raise ExecError(125, f"unable to find group {group}: no matching entries in group file")
        gid = int(group) if match is None else int(match[2])
        supplementary = [gid]
    else:
        supplementary = [gid]
        name = entry[0] if entry is not None else None
        for g in groups_db:
            member = name is not None and name in g[3].split(",")
            if member and g[2].isdigit() and int(g[2]) not in supplementary:
                supplementary.append(int(g[2]))
    return Identity(uid=uid, gid=gid, groups=tuple(supplementary), home=home)


def group_ids(names: Iterable[str], *, etc: str = "/etc") -> tuple[int, ...]:
    """`--group-add`'s groups as gids, names looked up in the container's `etc`/group."""
    db = [e for e in _read_db(f"{etc}/group") if len(e) >= 4]
    gids = []
    for name in names:
        match = next((g for g in db if g[0] == name and g[2].isdigit()), None)
        if match is None and not name.isdigit():
            raise ExecError(125, f"unable to find group {name}: no matching entries in group file")
        gids.append(int(name) if match is None else int(match[2]))
    return tuple(gids)


# ---------------------------------------------------------------------------------------------
# becoming the command

# Python ignores these at start-up; an exec'd program must get the defaults back.
_PYTHON_IGNORED: Final = (signal.SIGPIPE, signal.SIGXFSZ)


def reset_signals(handled: Iterable[int]) -> None:
    """Default dispositions and an empty mask, as a freshly started program expects."""
    for sig in (*_PYTHON_IGNORED, *handled):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def attach_terminal(slave: int) -> None:
    """Make the pty `slave` our controlling terminal and stdio (we must lead a session)."""
    if os.getsid(0) != os.getpid():
        os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def _become(identity: Identity, *, can_setgroups: bool) -> None:
    try:
        if can_setgroups:
            os.setgroups(list(identity.groups))
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EINVAL:
            hint = " (not mapped in the user namespace: give the user a range in /etc/subuid)"
        raise ExecError(
            125, f"cannot switch to uid {identity.uid} gid {identity.gid}: {exc.strerror}{hint}"
        ) from None


def exec_process(
    spec: ProcessSpec,
    *,
    report: Callable[[int, str], None],
    slave: int | None,
    handled_signals: Iterable[int],
    can_setgroups: bool,
    confinement: Confinement,
    pdeathsig: int | None = None,
) -> NoReturn:
    """Confine the process (`confinement`: bounding set and seccomp before the switch of user,
    the final capabilities after it; see runtime.security), switch user, stdio, working dir,
    environment; exec `spec.argv`. Never returns: a failure is reported with
    `report(code, message)` and the process exits with that code."""
    code = 125
    try:
        identity = resolve_user(spec.user)
        if spec.groups:
            extra = [g for g in group_ids(spec.groups) if g not in identity.groups]
            identity = replace(identity, groups=(*identity.groups, *extra))
        env = dict(item.partition("=")[::2] for item in spec.env)
        env.setdefault("HOME", identity.home)
        if slave is not None:
            attach_terminal(slave)
        elif not spec.interactive:
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        confinement.enter()
        if identity.uid != os.getuid() or identity.gid != os.getgid() or can_setgroups:
            _become(identity, can_setgroups=can_setgroups)
        confinement.finish(identity.uid)
        if pdeathsig is not None:  # a change of credentials cleared it
            libc.set_pdeathsig(pdeathsig)
        try:
            os.chdir(spec.workdir or "/")
        except OSError as exc:
            raise ExecError(125, f"working directory {spec.workdir}: {exc.strerror}") from None
        if not spec.argv:
            raise ExecError(125, "no command given and the image defines none")
        reset_signals(handled_signals)
        try:
            os.execvpe(spec.argv[0], list(spec.argv), env)
        except FileNotFoundError:
            what = "no such file or directory" if "/" in spec.argv[0] else "not found in $PATH"
            raise ExecError(127, f"{spec.argv[0]}: {what}") from None
        except PermissionError:
            raise ExecError(126, f"{spec.argv[0]}: permission denied") from None
        except OSError as exc:
            raise ExecError(126, f"{spec.argv[0]}: {exc.strerror}") from None
    except ExecError as exc:
        code = exc.code
        report(code, str(exc))
    except BaseException as exc:
        report(code, f"{type(exc).__name__}: {exc}")
    os._exit(code)
