"""Linux capabilities of a container: the names, podman's default set, `--cap-add`/`--cap-drop`.

A container's capability set is what its processes may hold: it becomes the bounding set of every
process in it, and the permitted and effective sets of a process running as root (uid 0 inside).
A process of another user has none effective or permitted, as in docker and podman; the
inheritable and ambient sets are empty, as podman and docker have left them since
CVE-2022-27649 / CVE-2022-24769 (a non-empty inheritable set lets a program with inheritable
file capabilities gain them after a switch to another user).

The default set is podman's (`containers.conf` default_capabilities): CapEff `00000000800405fb`.
`--privileged` grants every capability strata itself holds (its bounding set).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from unionfs import libc
from unionfs.errors import UsageError

# linux/capability.h, by number.
NAMES: Final[tuple[str, ...]] = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
NUMBERS: Final[dict[str, int]] = {name: number for number, name in enumerate(NAMES)}

# podman's default_capabilities (containers-common pkg/config/default.go).
DEFAULT: Final[frozenset[str]] = frozenset(
    {
        "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP",
        "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return min(int(f.read()), len(NAMES) - 1)
    except (OSError, ValueError):
        return len(NAMES) - 1


def available() -> frozenset[str]:
    """The capabilities strata itself may hand out: its own bounding set (a sandboxed host's
    root may lack some; a user namespace's root has all)."""
    bits = (1 << (last_cap() + 1)) - 1
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    bits &= int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return frozenset(name for number, name in enumerate(NAMES) if bits >> number & 1)


def normalize(name: str, *, option: str) -> str:
    """`net_admin`, `CAP_NET_ADMIN` -> `NET_ADMIN`; `all` -> `ALL`; UsageError if unknown."""
    upper = name.strip().upper()
    bare = upper.removeprefix("CAP_")
    if bare == "ALL" or bare in NUMBERS:
        return bare
    raise UsageError(f"{option} {name}: unknown capability", 125)


def resolve(add: Iterable[str], drop: Iterable[str], *, privileged: bool = False) -> frozenset[str]:
    """The container's set, as docker computes it: `--privileged` is everything; `--cap-add ALL`
    is everything but what is dropped; `--cap-drop ALL` is only what is added; otherwise the
    default plus what is added, minus what is dropped. "Everything" is what strata itself may
    grant (`available()`); asking for a capability beyond that is a UsageError."""
    adds = {normalize(n, option="--cap-add") for n in add}
    drops = {normalize(n, option="--cap-drop") for n in drop}
    if privileged or "ALL" in adds:
        return available() - (set() if privileged else drops)
    missing = sorted(adds - {"ALL"} - available(), key=NUMBERS.__getitem__)
    if missing:
        raise UsageError(
            f"--cap-add {','.join(missing)}: not available to strata on this host"
            " (not in its own bounding set)",
            125,
        )
    if "ALL" in drops:
        return frozenset(adds)
    return frozenset((DEFAULT | adds) - drops)


def recorded(names: Iterable[str] | None) -> frozenset[str]:
    """A container's set as its config.json records it (`CAP_` names); None for a container
    made before strata recorded one, which runs with the default."""
    if names is None:
        return DEFAULT
    return frozenset(n.removeprefix("CAP_") for n in names)


def runs_as_root(user: str) -> bool:
    """Whether `-u USER[:GROUP]` (or the image's USER) is root, who holds the set effective.
    A name other than root is taken for another user, as it is in every image's passwd."""
    name = user.partition(":")[0]
    return name in ("", "0", "root")


def mask(names: Iterable[str]) -> int:
    """The bit mask of a set (as /proc/PID/status shows it in CapEff)."""
    bits = 0
    for name in names:
        bits |= 1 << NUMBERS[name]
    return bits


def sorted_names(names: Iterable[str]) -> list[str]:
    """`CAP_` names in capability-number order, as docker inspect lists them."""
    return [f"CAP_{n}" for n in sorted(names, key=NUMBERS.__getitem__)]


def drop_bounding(keep: frozenset[str]) -> None:
    """Drop every capability not in `keep` from the bounding set: no process of the container,
    nor a set-uid program or file capability it runs, can regain one (needs CAP_SETPCAP)."""
    for number in range(last_cap() + 1):
        if NAMES[number] not in keep:
            libc.capbset_drop(number)


def set_process_caps(names: frozenset[str], *, uid: int) -> None:
    """The final sets of a process that is about to exec: all of `names` effective and
    permitted for root, nothing for another user; inheritable and ambient empty."""
    bits = mask(names) if uid == 0 else 0
    libc.capset(effective=bits, permitted=bits, inheritable=0)
    libc.clear_ambient_caps()
