"""Health checks: the image's HEALTHCHECK (or `--health-*`) run as docker's daemon runs it.

The check is docker's `HealthConfig` (config.json `healthcheck`: `Test` `["CMD", ARG...]`,
`["CMD-SHELL", TEXT]` or `["NONE"]`; `Interval`, `Timeout`, `StartPeriod`, `StartInterval` in
nanoseconds and `Retries`, each left out when unset). Its results live in the container's
`health.json` (docker's `State.Health`: `Status`, `FailingStreak`, `Log`), replaced atomically
under a flock(2) of the container's directory, so `inspect` and `ps` of any process read it.

Who runs the checks: a process the monitor forks once the command runs (`spawn_checker`), so
that a check that hangs or fails never touches the monitor's own work (the container's output,
its log, its exit). Each check is a further fork that enters the container as `strata exec`
does (runtime.exec: namespaces, root, user, environment, working directory, confinement) and
forks the command in its own process group, killed with its group after `Timeout`:

    monitor
    └─ health checker      sleeps the interval, records each result, killed at the exit
       └─ probe            joined the container (exec.enter), waits for the command
          └─ command       the check, its stdout and stderr into one pipe the checker reads

docker's rules (moby daemon/health.go): the first check one interval after the start; during
`StartPeriod` the interval is `StartInterval` while the status is `starting`, and failures do
not count; exit status 0 is healthy, anything else a failure (2 is "reserved" in docker's
documentation, and counts as a failure in its daemon too); `Retries` failures in a row make it
unhealthy; the last 5 results are kept, each output cut at 4096 bytes ("..." appended); when
the container stops the status becomes `unhealthy`, as docker's does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn

from unionfs.errors import UsageError

from .logshow import go_duration, go_duration_text
from .state import RUNNING, ContainerDir, StateRoot, epoch, now, read_json, write_json

if TYPE_CHECKING:
    from .process import ProcessSpec

STARTING: Final = "starting"
HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"
NONE: Final = "none"  # `ps --filter health=none`: no health check

HEALTH_FILE: Final = "health.json"
SECOND: Final = 1_000_000_000
DEFAULT_INTERVAL: Final = 30 * SECOND
DEFAULT_TIMEOUT: Final = 30 * SECOND
DEFAULT_START_INTERVAL: Final = 5 * SECOND
DEFAULT_RETRIES: Final = 3
MIN_DURATION: Final = 1_000_000  # 1ms, docker's container.MinimumDuration
MAX_OUTPUT: Final = 4096
MAX_LOG: Final = 5
_DURATIONS: Final = ("Interval", "Timeout", "StartPeriod", "StartInterval")


# -- the configuration -------------------------------------------------------------------------


def _duration_flag(flag: str, text: str) -> int:
    """A Go duration as docker's flags take one (time.ParseDuration: a sign allowed)."""
    body = text[1:] if text[:1] in ("-", "+") else text
    ns = go_duration(body) if body else None
    if ns is None:
        raise UsageError(
            f'invalid argument "{text}" for "{flag}" flag: time: invalid duration "{text}"', 125
        )
    return -ns if text.startswith("-") else ns


def parse_flags(
    *,
    cmd: str,
    interval: str,
    timeout: str,
    retries: int,
    start_period: str,
    start_interval: str,
    no_healthcheck: bool,
) -> dict[str, object] | None:
    """`--health-*` and `--no-healthcheck` as docker's CLI and daemon check them (one line,
    status 125); None when none is given (the image's check applies)."""
    texts = {
        "Interval": ("--health-interval", interval),
        "Timeout": ("--health-timeout", timeout),
        "StartPeriod": ("--health-start-period", start_period),
        "StartInterval": ("--health-start-interval", start_interval),
    }
    durations = {key: _duration_flag(*given) if given[1] else 0 for key, given in texts.items()}
    if no_healthcheck:
        if cmd or retries or any(durations.values()):
            raise UsageError("--no-healthcheck conflicts with --health-* options", 125)
        return {"Test": ["NONE"]}
    if not (cmd or retries or any(durations.values())):
        return None
    for key, (flag, _) in texts.items():
        if durations[key] < 0:
            raise UsageError(f"{flag} cannot be negative", 125)
    if retries < 0:
        raise UsageError("--health-retries cannot be negative", 125)
    check: dict[str, object] = {"Test": ["CMD-SHELL", cmd] if cmd else []}
    check |= {key: value for key, value in durations.items() if value}
    if retries:
        check["Retries"] = retries
    return check


def merge(
    ours: dict[str, object] | None, image: dict[str, object] | None
) -> dict[str, object] | None:
    """The container's check: the command line's fields over the image's, as docker's daemon
    merges them (an empty Test, an unset duration or retries: the image's)."""
    if ours is None:
        return dict(image) if image is not None else None
    merged = dict(ours)
    if image is not None:
        test = image.get("Test")
        if not merged.get("Test") and isinstance(test, list):
            merged["Test"] = list(test)
        for key in (*_DURATIONS, "Retries"):
            if not merged.get(key) and image.get(key):
                merged[key] = image[key]
    return merged


def validate(check: dict[str, object] | None) -> None:
    """docker's daemon's check of the merged check (validateHealthCheck): durations of at
    least 1ms (an image's too), so that no check runs in a busy loop."""
    for key in _DURATIONS:
        value = (check or {}).get(key)
        if isinstance(value, int) and 0 < value < MIN_DURATION:
            raise UsageError(f"{key} in Healthcheck cannot be less than 1ms", 125)


def probe_argv(check: dict[str, object] | None, shell: tuple[str, ...]) -> tuple[str, ...] | None:
    """The command a check runs (CMD: as given; CMD-SHELL: under the image's SHELL, else
    `/bin/sh -c`); None when there is nothing to run (no check, NONE, an unknown kind)."""
    given = (check or {}).get("Test")
    if not isinstance(given, list) or len(given) < 2:
        return None
    test = [str(t) for t in given]
    if test[0] == "CMD":
        return tuple(test[1:])
    if test[0] == "CMD-SHELL":
        return (*(shell or ("/bin/sh", "-c")), *test[1:])
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """A check's timing with docker's defaults filled in (nanoseconds)."""

    interval: int
    timeout: int
    start_period: int
    start_interval: int
    retries: int

    @classmethod
    def of(cls, check: dict[str, object]) -> Settings:
        def number(key: str, default: int) -> int:
            value = check.get(key)
            return value if isinstance(value, int) and value > 0 else default

        return cls(
            interval=number("Interval", DEFAULT_INTERVAL),
            timeout=number("Timeout", DEFAULT_TIMEOUT),
            start_period=number("StartPeriod", 0),
            start_interval=number("StartInterval", DEFAULT_START_INTERVAL),
            retries=number("Retries", DEFAULT_RETRIES),
        )


# -- the recorded state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One check, as docker's `HealthcheckResult`."""

    start: str
    end: str
    exit_code: int
    output: str
    started: float  # time.time() at the start: against StartPeriod

    def to_json(self) -> dict[str, object]:
        return {
            "Start": self.start,
            "End": self.end,
            "ExitCode": self.exit_code,
            "Output": self.output,
        }


@contextlib.contextmanager
def _locked(cdir: ContainerDir) -> Iterator[None]:
    """flock(2) of the container's directory: one writer of health.json at a time (the
    checker, `strata healthcheck run`, the monitor at the exit)."""
    fd = os.open(cdir.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read(cdir: ContainerDir) -> dict[str, object] | None:
    """docker's `State.Health` of the container; None when it never had a check running."""
    try:
        data = read_json(cdir.sub(HEALTH_FILE))
    except (OSError, ValueError):
        return None
    return data if isinstance(data.get("Status"), str) else None


def _log_of(health: dict[str, object]) -> list[object]:
    log = health.get("Log")
    return list(log) if isinstance(log, list) else []


def shown(cdir: ContainerDir) -> dict[str, object] | None:
    """`State.Health` as `inspect` shows it: None without a check (or before its first start);
    `unhealthy` once the container is not running, also when its monitor died unseen (killed
    with SIGKILL, so it could not write that down)."""
    if probe_argv(cdir.config.healthcheck, cdir.config.shell) is None:
        return None
    health = read(cdir)
    if health is not None and cdir.effective_state().status != RUNNING:
        health["Status"] = UNHEALTHY
    return health


def status(cdir: ContainerDir) -> str:
    """`starting`, `healthy`, `unhealthy`, or `none` (no check): `ps --filter health=`."""
    health = shown(cdir)
    return str(health["Status"]) if health is not None else NONE


def begin(cdir: ContainerDir) -> None:
    """A start: `starting`, no failures yet; the log of earlier runs stays (docker's)."""
    with _locked(cdir):
        health = read(cdir) or {}
        write_json(
            cdir.sub(HEALTH_FILE),
            {"Status": STARTING, "FailingStreak": 0, "Log": _log_of(health)},
        )


def end(cdir: ContainerDir) -> None:
    """The container stopped: `unhealthy`, as docker's daemon marks it when the checks stop."""
    with _locked(cdir):
        health = read(cdir)
        if health is not None:
            write_json(cdir.sub(HEALTH_FILE), health | {"Status": UNHEALTHY})


def record(cdir: ContainerDir, result: Result) -> str:
    """Add a result as docker's handleProbeResult does; the status after it."""
    settings = Settings.of(cdir.config.healthcheck or {})
    with _locked(cdir):
        health = read(cdir) or {"Status": STARTING, "FailingStreak": 0, "Log": []}
        log = [*_log_of(health), result.to_json()][-MAX_LOG:]
        streak = health.get("FailingStreak")
        state, streak = str(health["Status"]), streak if isinstance(streak, int) else 0
        if result.exit_code == 0:
            state, streak = HEALTHY, 0
        else:
            started = epoch(cdir.read_state().started_at) or 0.0
            in_start_period = result.started - started < settings.start_period / SECOND
            if not (state == STARTING and in_start_period):
                streak += 1
                if streak >= settings.retries:
                    state = UNHEALTHY
        write_json(cdir.sub(HEALTH_FILE), {"Status": state, "FailingStreak": streak, "Log": log})
    return state


# -- running a check ---------------------------------------------------------------------------


def check_spec(cdir: ContainerDir) -> ProcessSpec:
    """The check's process: as docker's, the container's user, working directory and
    environment (and --group-add, as `strata exec`); no terminal, no input."""
    from .process import ProcessSpec

    cfg = cdir.config
    argv = probe_argv(cfg.healthcheck, cfg.shell)
    if argv is None:
        raise UsageError(f"container {cdir.name} has no defined healthcheck", 125)
    return ProcessSpec(
        argv=argv,
        env=cfg.env,
        workdir=cfg.workdir,
        user=cfg.user,
        tty=False,
        interactive=False,
        groups=cfg.group_add,
    )


def run_check(root: StateRoot, cdir: ContainerDir) -> Result:
    """Run the check once in the running container (a probe process, forked): its result.
    The probe reports one line on a pipe: `exit N`, `timeout` or `error MESSAGE`."""
    spec = check_spec(cdir)
    timeout = Settings.of(cdir.config.healthcheck or {}).timeout
    started, start = time.time(), now()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(out_r)
        os.close(rep_r)
        _probe(root, cdir, spec, timeout, out_w, rep_w)
    os.close(out_w)
    os.close(rep_w)
    output, report = _collect(out_r, rep_r, deadline=time.monotonic() + timeout / SECOND + 30)
    if report is None:  # the probe itself hung (joining the container?): give up on it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        report = "error timed out starting the health check"
    os.waitpid(pid, 0)
    text = output[:MAX_OUTPUT].decode(errors="replace") + (
        "..." if len(output) > MAX_OUTPUT else ""
    )
    word, _, rest = report.partition(" ")
    if word == "exit" and rest.lstrip("-").isdigit():
        code = int(rest)
    elif word == "timeout":
        code = -1
        limit = go_duration_text(timeout)
        text = f"Health check exceeded timeout ({limit})" + (f": {text}" if text else "")
    else:  # could not run: docker's -1 with the error as the output
        code, text = -1, rest or "the health check failed to start"
    return Result(start=start, end=now(), exit_code=code, output=text, started=started)


def _collect(out_r: int, rep_r: int, *, deadline: float) -> tuple[bytes, str | None]:
    """The check's output (up to a byte more than kept, the rest read and dropped) until the
    probe's report; what is still waiting in the pipe then, without waiting for the command's
    children that may hold it open."""
    output = bytearray()
    report = bytearray()
    live = {out_r, rep_r}
    try:
        while rep_r in live:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(output), None
            ready, _, _ = select.select(list(live), [], [], left)
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    live.discard(fd)
                elif fd == out_r:
                    output += data[: MAX_OUTPUT + 1 - len(output)]
                else:
                    report += data
        while out_r in live and select.select([out_r], [], [], 0)[0]:
            data = os.read(out_r, 65536)
            if not data:
                break
            output += data[: MAX_OUTPUT + 1 - len(output)]
    finally:
        os.close(out_r)
        os.close(rep_r)
    return bytes(output), report.decode(errors="replace").strip()


def _probe(
    root: StateRoot, cdir: ContainerDir, spec: ProcessSpec, timeout: int, out_w: int, rep_w: int
) -> NoReturn:  # pragma: no cover - child
    """Enter the container (as `strata exec`), fork the check in its own process group with
    stdout and stderr on `out_w`, wait for it at most `timeout`; report on `rep_w`."""
    from unionfs import libc, startup

    from .exec import enter, exec_child
    from .init import exit_code

    def report(line: str) -> NoReturn:
        with contextlib.suppress(OSError):
            os.write(rep_w, line.encode() + b"\n")
        os._exit(0)

    try:
        libc.set_pdeathsig(signal.SIGKILL)
        joined = enter(root, cdir)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            exec_child(cdir, spec, joined, err_w, pdeathsig=signal.SIGKILL)
        os.close(err_w)
        os.close(out_w)
        failure = startup.wait_for_start(err_r, died=None, default_code=126)
        if failure is not None:
            os.waitpid(pid, 0)
            report(f"error {failure.message}")
        pidfd = os.pidfd_open(pid)
        if not select.select([pidfd], [], [], timeout / SECOND)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            report("timeout")
        _, wait_status = os.waitpid(pid, 0)
        report(f"exit {exit_code(wait_status)}")
    except UsageError as exc:
        report(f"error {exc}")
    except OSError as exc:
        report(f"error {exc.strerror or exc}")
    except BaseException as exc:
        report(f"error {type(exc).__name__}: {exc}")


# -- the checker, the monitor's child ----------------------------------------------------------


def spawn_checker(root: StateRoot, cdir: ContainerDir) -> int:
    """Record `starting` and fork the checker (the monitor calls this once the command runs);
    its pid, or 0 when the container has no check."""
    if probe_argv(cdir.config.healthcheck, cdir.config.shell) is None:
        return 0
    from .init import FORWARDED

    begin(cdir)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            _checker(root, cdir, monitor=os.getppid())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return pid


def _checker(root: StateRoot, cdir: ContainerDir, *, monitor: int) -> NoReturn:  # pragma: no cover
    """The loop of docker's health monitor: wait the interval, check, record; never returns
    (killed by the monitor, or with it)."""
    from unionfs import libc

    from .init import FORWARDED

    code = 0
    try:
        libc.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != monitor:
            os._exit(0)
        for signum in (*FORWARDED, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _quiet_stdio(cdir)
        settings = Settings.of(cdir.config.healthcheck or {})
        started = epoch(cdir.read_state().started_at) or time.time()
        state = STARTING
        while True:
            time.sleep(_interval(settings, time.time() - started, state) / SECOND)
            if cdir.read_state().paused:  # exec into a frozen container would hang
                continue
            state = record(cdir, run_check(root, cdir))
    except BaseException as exc:
        print(f"strata: health checks stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    os._exit(code)


def _interval(settings: Settings, elapsed: float, state: str) -> int:
    """How long until the next check (docker's getInterval, as released in docker 25 to 28):
    the start interval while `starting` within the start period, else the interval."""
    if elapsed * SECOND < settings.start_period and state == STARTING:
        return settings.start_interval
    return settings.interval


def _quiet_stdio(cdir: ContainerDir) -> None:
    """The checker writes nowhere near the container's output: stdin and stdout /dev/null, its
    own messages to monitor.log; every other descriptor of the monitor closed."""
    null = os.open("/dev/null", os.O_RDWR)
    log = os.open(cdir.sub("monitor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def stop_checker(cdir: ContainerDir, pid: int) -> None:
    """Kill the checker (its probe follows, PR_SET_PDEATHSIG) and reap it, then mark the
    container unhealthy (docker's daemon does when the checks stop)."""
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        end(cdir)


def run_now(root: StateRoot, cdir: ContainerDir) -> Result:
    """`strata healthcheck run`: one check now, recorded like the checker's (podman's)."""
    check_spec(cdir)  # no check: 125 before anything else
    state = cdir.effective_state()
    if state.status != RUNNING:
        raise UsageError(f"container {cdir.name} is not running", 125)
    if state.paused:
        raise UsageError(f"container {cdir.name} is paused", 125)
    result = run_check(root, cdir)
    if cdir.effective_state().status == RUNNING:
        record(cdir, result)
    return result
