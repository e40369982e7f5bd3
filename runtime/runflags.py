"""The syntax of `run`/`create`'s docker flags that shape the container's process: `--label`
and `--label-file`, `--stop-signal`, `--stop-timeout`, `--ulimit`, `--shm-size`, `--group-add`,
`--userns` and `--platform`. Each parser gives one line and exit status 125 on bad input, as
docker's; what they decide is recorded in config.json and applied by PID 1 (`apply_ulimits`),
the process (`group-add`) and `strata stop`.
"""

from __future__ import annotations

import platform
import re
import resource
import signal
from collections.abc import Iterable
from typing import Final

from unionfs.errors import UsageError

# docker's --ulimit names and the rlimits they set
ULIMITS: Final = {
    "core": resource.RLIMIT_CORE, "cpu": resource.RLIMIT_CPU, "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE, "locks": 10,  # RLIMIT_LOCKS: not in Python's resource
    "memlock": resource.RLIMIT_MEMLOCK, "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE, "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC, "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO, "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING, "stack": resource.RLIMIT_STACK,
}  # fmt: skip

_SIZE: Final = re.compile(r"(\d+)([bkmg]?)", re.IGNORECASE)


def parse_signal(text: str, flag: str = "") -> int:
    """A signal by name (`TERM`, `SIGTERM`, `sigterm`, `RTMIN+3`) or number."""
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
    elif text:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        base, plus, offset = name.partition("+")
        if plus and base in ("SIGRTMIN", "SIGRTMAX") and offset.isdigit():
            number = getattr(signal, base) + int(offset)
            if number <= signal.SIGRTMAX:
                return int(number)
        value = getattr(signal.Signals, name, None)
        if value is not None:
            return int(value)
    where = f"{flag} " if flag else ""
    raise UsageError(f"{where}unknown signal {text!r}", 125)


def parse_labels(items: Iterable[str], flag: str = "--label") -> tuple[tuple[str, str], ...]:
    """`K=V` (or `K`, an empty value) labels, in order, as docker takes them."""
    labels = []
    for item in items:
        key, _, value = item.partition("=")
        if not key.strip():
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE", 125)
        labels.append((key, value))
    return tuple(labels)


def read_label_file(path: str) -> list[str]:
    """`--label-file`: one `K=V` per line; blank lines and `#` comments skipped (docker's)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--label-file {path}: {exc.strerror}", 125) from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def parse_ulimit(spec: str) -> str:
    """`--ulimit NAME=SOFT[:HARD]` (-1: unlimited), checked; returned as `NAME=SOFT:HARD`."""
    name, eq, values = spec.partition("=")
    if not eq or name not in ULIMITS:
        raise UsageError(
            f"--ulimit {spec}: expected NAME=SOFT[:HARD] with NAME one of {', '.join(ULIMITS)}",
            125,
        )
    soft_text, _, hard_text = values.partition(":")
    numbers = []
    for text in (soft_text, hard_text or soft_text):
        if not re.fullmatch(r"-1|\d+", text):
            raise UsageError(f"--ulimit {spec}: invalid value {text!r}", 125)
        numbers.append(int(text))
    soft, hard = numbers
    if hard != -1 and (soft == -1 or soft > hard):
        raise UsageError(
            f"--ulimit {spec}: ulimit soft limit must be less than or equal to hard limit:"
            f" {soft_text} > {hard_text}",
            125,
        )
    return f"{name}={soft}:{hard}"


def apply_ulimits(ulimits: Iterable[str]) -> None:
    """Set the recorded ulimits on this process (PID 1, before exec: the command and every
    process of the container inherit them). Raising a hard limit above the host's needs
    CAP_SYS_RESOURCE: an OSError that fails the start."""
    for item in ulimits:
        name, _, values = item.partition("=")
        soft, _, hard = values.partition(":")

        def value(text: str) -> int:
            return resource.RLIM_INFINITY if int(text) == -1 else int(text)

        try:
            resource.setrlimit(ULIMITS[name], (value(soft), value(hard)))
        except (OSError, ValueError) as exc:
            raise OSError(getattr(exc, "errno", None) or 1, f"--ulimit {item}: {exc}") from None


def parse_size(text: str, flag: str) -> int:
    """A size as docker takes it for `--shm-size`: bytes, or a number with b, k, m or g."""
    match = _SIZE.fullmatch(text)
    if match is None or int(match.group(1)) == 0:
        raise UsageError(f"{flag} {text}: expected a size such as 64m or 1g", 125)
    unit = match.group(2).lower()
    return int(match.group(1)) * {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    """`--group-add NAME|GID`: names are looked up in the container's /etc/group at start."""
    for group in groups:
        if not re.fullmatch(r"\d+|[a-zA-Z_][a-zA-Z0-9_.-]*\$?", group):
            raise UsageError(f"--group-add {group!r}: not a group name or id", 125)
    return tuple(groups)


def parse_userns(mode: str, *, rootless: bool) -> tuple[int, int] | None:
    """`--userns`: `host` (as root the host's user namespace, docker's default; rootless
    strata's own, the only one it makes), or podman's `keep-id[:uid=N,gid=N]` (rootless only, as
    podman: the user's ids, or N, are the same inside; runtime.namespaces.keep_id_map): then
    the uid and gid inside, -1 for the user's own. `auto`, `private`, `nomap` and the rest are
    refused."""
    if mode in ("", "host"):
        return None
    name, _, opts = mode.partition(":")
    if name != "keep-id":
        raise UsageError(f"--userns {mode}: only host and keep-id are supported", 125)
    if not rootless:
        raise UsageError(f"--userns {mode}: keep-id is only supported in rootless mode", 125)
    ids = {"uid": -1, "gid": -1}
    for opt in opts.split(",") if opts else []:
        key, eq, value = opt.partition("=")
        if key not in ids or not eq or not value.isdigit() or int(value) >= 2**32 - 1:
            raise UsageError(f"--userns {mode}: unknown keep-id option {opt!r}", 125)
        ids[key] = int(value)
    return ids["uid"], ids["gid"]


def check_platform(text: str) -> None:
    """`--platform`: only this host's (`linux/amd64`, `linux/arm64/v8`, ...)."""
    if not text:
        return
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        platform.machine(), platform.machine()
    )
    os_name, _, rest = text.partition("/")
    wanted_arch = rest.partition("/")[0]
    if os_name != "linux" or (wanted_arch and wanted_arch != arch):
        raise UsageError(f"--platform {text}: this host runs linux/{arch} only (no emulation)", 125)
