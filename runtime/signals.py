"""The monitor's signal handling (`strata run`, `strata exec`): before the container's command
runs, an interrupt aborts the start; while it runs, signals are relayed to it; afterwards they are
ignored so that clean-up finishes."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

from . import console
from .init import FORWARDED, deliver


class Interrupted(BaseException):
    """A SIGINT/SIGTERM/SIGHUP while the container was still starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalRelay:
    """The monitor's signal handlers: before the container runs, an interrupt aborts the start;
    while it runs, signals go to its PID 1 (SIGWINCH resizes the pty instead); afterwards they
    are ignored, so that clean-up finishes."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.is_namespace_init = True
        self.emulated: int | None = None
        self.master: int | None = None
        self.size_file: Path | None = None  # a detached monitor's: console.resize_pty
        self.cleaning = False
        self._saved: dict[int, object] = {}

    def install(self) -> None:
        for sig in FORWARDED:
            self._saved[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._saved.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.cleaning:
            return
        if self.target is None:
            if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                raise Interrupted(signum)
            return
        if signum == signal.SIGWINCH and self.master is not None:
            console.resize_pty(self.master, self.size_file)
            return
        if deliver(self.target, signum, is_namespace_init=self.is_namespace_init):
            self.emulated = signum
