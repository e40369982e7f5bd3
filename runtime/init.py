"""Signals, exit statuses, and the tiny PID 1 (`--init`).

A process that is PID 1 of its PID namespace is special: the kernel drops every signal for which
it has not installed a handler (only SIGKILL and SIGSTOP from an ancestor namespace get through),
and every orphan in the namespace becomes its child. So there are two ways to run a command:

- as PID 1 itself (the default, as Docker does without `--init`; `echo $$` prints 1). The runtime
  outside forwards signals with `deliver()`: a signal the command catches is passed on, and one it
  neither catches nor ignores whose default action is to terminate is carried out with SIGKILL
  (the kernel would otherwise drop it), the status then reported as if that signal had killed it.
  Reaping orphans is the command's job (shells do it).
- under the tiny init (`--init`): `run_init()` is PID 1, forks the command, forwards every signal
  to it, reaps all zombies and exits with the command's status once it exits (128+N when a
  signal N killed it); the kernel then kills whatever is left in the namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Final

# Signals whose default action terminates the process (with or without a core dump).
TERMINATING: Final = frozenset(
    {
        signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGILL, signal.SIGTRAP,
        signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGUSR1, signal.SIGSEGV,
        signal.SIGUSR2, signal.SIGPIPE, signal.SIGALRM, signal.SIGTERM, signal.SIGSTKFLT,
        signal.SIGXCPU, signal.SIGXFSZ, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO,
        signal.SIGPWR, signal.SIGSYS,
    }
)  # fmt: skip

# What a runtime passes on to the container (SIGCHLD is its own business, SIGKILL/SIGSTOP
# cannot be caught).
FORWARDED: Final = frozenset(
    {
        signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
        signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT, signal.SIGWINCH, signal.SIGPWR,
    }
)  # fmt: skip


# What the tiny init passes on besides FORWARDED, as tini does: every other signal it can catch
# (a --stop-signal or STOPSIGNAL such as SIGRTMIN+3 that `strata stop` sends it straight), but
# the faults of its own, job control it must not obey, and SIGCHLD, which is its own business.
PASSED_ON: Final = frozenset(signal.valid_signals()) - FORWARDED - {
    signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGSEGV, signal.SIGBUS,
    signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS, signal.SIGABRT,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP,
}  # fmt: skip


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _signal_masks(pid: int) -> tuple[int, int] | None:
    """(caught, ignored) signal bit masks of process `pid` from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    caught = ignored = 0
    for line in text.splitlines():
        if line.startswith("SigCgt:"):
            caught = int(line.split()[1], 16)
        elif line.startswith("SigIgn:"):
            ignored = int(line.split()[1], 16)
    return caught, ignored


def deliver(pid: int, sig: int, *, is_namespace_init: bool) -> bool:
    """Send `sig` to `pid` as if it were an ordinary process; True if SIGKILL stood in for a
    terminating signal that a namespace init would have dropped."""
    with contextlib.suppress(ProcessLookupError):
        if is_namespace_init and sig in TERMINATING:
            masks = _signal_masks(pid)
            if masks is not None:
                bit = 1 << (sig - 1)
                caught, ignored = masks
                if not (caught | ignored) & bit:
                    os.kill(pid, signal.SIGKILL)
                    return True
        os.kill(pid, sig)
    return False


def run_init(start_child: Callable[[], int], confine: Callable[[], None]) -> int:
    """Be PID 1: start the command (`start_child()` forks it and returns its pid), confine
    ourselves (`confine()`: the container's capabilities and seccomp filter), forward signals to
    the command, reap every child, and return the command's exit code once it has exited.

    Call with FORWARDED signals blocked: they stay pending until the handlers are in place, so
    nothing sent during start-up is lost.
    """
    child = start_child()
    confine()

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED | PASSED_ON:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # cannot happen while the command lives; be safe
            return 0
        if pid == child:
            return exit_code(status)
