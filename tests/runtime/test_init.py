"""runtime.init: exit codes and signal delivery to a namespace's init."""

from __future__ import annotations

import signal
import subprocess
import sys

from runtime.init import deliver, exit_code


def test_exit_codes_are_those_a_shell_reports() -> None:
    assert exit_code(0) == 0
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 137


def test_deliver_stands_in_with_sigkill_only_for_unhandled_terminating_signals() -> None:
    plain = subprocess.Popen(["sleep", "30"])
    handler = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
         "print('ready', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert handler.stdout is not None
        assert handler.stdout.readline() == "ready\n"
        assert deliver(plain.pid, signal.SIGTERM, is_namespace_init=True) is True
        assert plain.wait(10) == -signal.SIGKILL
        assert deliver(handler.pid, signal.SIGTERM, is_namespace_init=True) is False
        assert handler.wait(10) == 7
    finally:
        for proc in (plain, handler):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if handler.stdout is not None:
            handler.stdout.close()
