"""Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`) and `strata restart`.

Docker's rules: when the container's command exits, its monitor starts it again under `always`
and `unless-stopped`, and under `on-failure` when it exited non-zero, at most N times if N is
given. A container stopped by hand (`strata stop`, `kill`, `rm -f`, `restart`) is not started
again. Between two starts the monitor waits, as docker's restart manager: 100 ms, doubled
after each start, at most a minute, and back to 100 ms when the command had run 10 s or more;
meanwhile the container shows as restarting. `RestartCount` (inspect) counts the restarts since
the container was last started by hand.

strata has no daemon: the container's own monitor does the restarting (runtime.lifecycle runs
it again), so nothing brings a container back after the host reboots, and `always` and
`unless-stopped` are the same. A foreground `run` returns the first exit status, as the docker
client does, and the restarts go on in a detached monitor.
"""

from __future__ import annotations

from typing import Final

from unionfs.errors import UsageError

POLICIES: Final = ("no", "on-failure", "always", "unless-stopped")
FIRST_DELAY: Final = 0.1
MAX_DELAY: Final = 60.0
RESET_AFTER: Final = 10.0  # a run this long starts the delays afresh


def parse_policy(text: str) -> tuple[str, int]:
    """`--restart` as (policy, maximum retry count; 0 = no maximum); UsageError (125)."""
    name, sep, count = text.partition(":")
    if name not in POLICIES:
        raise UsageError(
            f"--restart {text}: invalid restart policy (no, on-failure[:N], always,"
            " unless-stopped)",
            125,
        )
    if not sep:
        return name, 0
    if name != "on-failure":
        raise UsageError(
            f"--restart {text}: maximum retry count cannot be used with restart policy {name!r}",
            125,
        )
    if not count.isdigit() or int(count) >= 2**31:
        raise UsageError(f"--restart {text}: the retry count must be a number >= 0", 125)
    return name, int(count)


def wanted(policy: str, retries: int, code: int, count: int) -> bool:
    """Whether a container that exited with `code`, restarted `count` times so far, is started
    again (a stop by hand is checked by the caller)."""
    if policy in ("always", "unless-stopped"):
        return True
    if policy == "on-failure":
        return code != 0 and (retries == 0 or count < retries)
    return False


def next_delay(delay: float, ran_for: float) -> float:
    """The wait before the next start, after one that waited `delay` and ran `ran_for` s."""
    if ran_for >= RESET_AFTER:
        return FIRST_DELAY
    return min(delay * 2, MAX_DELAY)
