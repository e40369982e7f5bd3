"""What confines a container's processes: capabilities, seccomp, no_new_privs, and the options.

`SecurityOptions` is what the command line asked for (`--privileged`, `--cap-add`, `--cap-drop`,
`--security-opt`), checked when the container is created. `Confinement` is what a process of the
container applies to itself just before it execs its command (in PID 1, in `--init`'s init, in
every `strata exec`), prepared by the runtime before it forks, since nothing can be read from the
host once the process is in the container:

1. `enter()`, while the process still holds every capability: drop the bounding set to the
   container's set, set no_new_privs if asked, load the seccomp filter (without no_new_privs the
   kernel requires CAP_SYS_ADMIN for that, which is why it happens before the drop);
2. the switch to the container's user (setgroups, setgid, setuid: the filter allows them);
3. `finish(uid)`: the final capability sets (root: the container's set; others: none).

The order is runc's. The mounts that hide and protect /proc and /sys are in `mounts`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unionfs import libc
from unionfs.errors import UsageError

from . import capabilities

SECCOMP_DEFAULT: Final = "default"
SECCOMP_UNCONFINED: Final = "unconfined"
SECCOMP_PROFILE: Final = "profile"  # a file given at create, copied into the container's dir
PROFILE_FILE: Final = "seccomp.json"

# --security-opt values accepted and ignored: strata has no SELinux or AppArmor support, so
# turning them off is what it does anyway.
_NO_OPS: Final = frozenset({"label=disable", "label:disable", "apparmor=unconfined",
                            "apparmor:unconfined"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class SecurityOptions:
    """The container's security settings, as asked for on the command line."""

    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: str = SECCOMP_DEFAULT  # or SECCOMP_UNCONFINED, or a profile file's path
    no_new_privileges: bool = False
    mask_paths: bool = True  # docker's systempaths=unconfined turns it off
    security_opt: tuple[str, ...] = ()  # as given, for inspect

    def capabilities(self) -> frozenset[str]:
        return capabilities.resolve(self.cap_add, self.cap_drop, privileged=self.privileged)

    @property
    def profile_file(self) -> str | None:
        """The seccomp profile file to read at create, if one applies (not with --privileged)."""
        if self.privileged or self.seccomp in (SECCOMP_DEFAULT, SECCOMP_UNCONFINED):
            return None
        return self.seccomp

    @property
    def seccomp_mode(self) -> str:
        """What the container records: default, unconfined (also --privileged) or profile."""
        if self.privileged:
            return SECCOMP_UNCONFINED
        return SECCOMP_PROFILE if self.profile_file is not None else self.seccomp


def _split(values: Iterable[str]) -> tuple[str, ...]:
    """`--cap-add A,B --cap-add C` -> (A, B, C), as podman takes them."""
    return tuple(part for value in values for part in value.split(",") if part.strip())


def parse_options(
    *,
    privileged: bool,
    cap_add: Iterable[str],
    cap_drop: Iterable[str],
    security_opt: Iterable[str],
) -> SecurityOptions:
    """Check the options (UsageError, exit 125, on anything unknown)."""
    seccomp = SECCOMP_DEFAULT
    no_new_privileges = False
    mask_paths = True
    given = tuple(security_opt)
    for opt in given:
        key, sep, value = opt.partition("=")
        if not sep:  # docker's old KEY:VALUE spelling
            key, sep, value = opt.partition(":")
        if opt in _NO_OPS:
            continue
        if key == "seccomp" and value:
            seccomp = value if value == SECCOMP_UNCONFINED else str(Path(value).absolute())
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            no_new_privileges = value != "false"
        elif key == "systempaths" and value == "unconfined":
            mask_paths = False
        else:
            raise UsageError(
                f"--security-opt {opt}: unknown option (seccomp=unconfined|FILE,"
                " no-new-privileges, systempaths=unconfined, label=disable,"
                " apparmor=unconfined)",
                125,
            )
    options = SecurityOptions(
        privileged=privileged,
        cap_add=_split(cap_add),
        cap_drop=_split(cap_drop),
        seccomp=seccomp,
        no_new_privileges=no_new_privileges,
        mask_paths=mask_paths,
        security_opt=given,
    )
    options.capabilities()  # unknown names fail here
    return options


def describe(seccomp: str, origin: str) -> str:
    """The seccomp mode as inspect shows it."""
    if seccomp == SECCOMP_PROFILE:
        return f"profile {shlex.quote(origin)}" if origin else "profile"
    return seccomp


@dataclass(frozen=True, slots=True)
class Confinement:
    """What a container process applies to itself before exec (see the module docstring)."""

    capabilities: frozenset[str]
    seccomp_program: bytes | None
    no_new_privileges: bool

    def enter(self) -> None:
        capabilities.drop_bounding(self.capabilities)
        if self.no_new_privileges:
            libc.set_no_new_privs()
        if self.seccomp_program is not None:
            libc.load_seccomp_program(self.seccomp_program)

    def finish(self, uid: int) -> None:
        capabilities.set_process_caps(self.capabilities, uid=uid)


def confinement(
    *,
    caps: Iterable[str],
    seccomp: str,
    no_new_privileges: bool,
    container_dir: Path,
    cache_dir: Path | None,
) -> Confinement:
    """The confinement of a container, its seccomp program compiled (or found in the cache)."""
    from . import seccomp as sc

    names = frozenset(caps)
    program = None
    if seccomp == SECCOMP_DEFAULT:
        program = sc.program(sc.DEFAULT, names, cache_dir)
    elif seccomp == SECCOMP_PROFILE:
        path = container_dir / PROFILE_FILE
        profile, _ = sc.read_profile(str(path))
        program = sc.program(profile, names, cache_dir, where=str(path))
    elif seccomp != SECCOMP_UNCONFINED:
        raise UsageError(f"container config: unknown seccomp mode {seccomp!r}", 125)
    return Confinement(names, program, no_new_privileges)
