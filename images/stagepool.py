"""The stages of a build run in parallel where they are independent (as BuildKit does): each
stage once, after the stages it needs; several ready at the same time each run in a child
process of their own.

A stage alone (nothing else ready, nothing running) runs in this process, so a build with one
line of stages prints exactly what it printed before. A stage in a child process has its stdout
and stderr (the builder's progress and its RUN containers' output, which go to fds 1 and 2) in a
pipe that this process reads, printing each line prefixed with `[STAGE] ` as it comes, so
concurrent stages stay readable. The child hands its result back as JSON in a file.

The first stage that fails stops the others: each running child gets SIGTERM, which in a child
raises `Cancelled` (its mounts and containers are removed by the context managers on the way
out; during a RUN the runtime's monitor forwards the signal to the container, the RUN fails,
and the same cleanup runs). Nothing new starts, every child is waited for, then the first error
is raised. Why processes and not threads: the runtime forks (containers, union daemons) and
writes to fds 1 and 2, which a thread can neither capture nor safely share.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from unionfs.errors import UsageError

# How many stages run at the same time (children); more wait for one to end.
MAX_PARALLEL: Final = 4


class Cancelled(BaseException):
    """SIGTERM in a stage's child: another stage failed. A BaseException, so that no
    `except Exception` on the way swallows it; the `with` blocks still clean up."""


class StageFailed(UsageError):
    """A stage built in a child process failed; the message is the child's error line."""


@dataclass(slots=True)
class _Child:
    index: int
    pid: int
    fd: int  # the read end of its output pipe
    result: Path
    pending: bytes = b""


def _cancel(_signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup must not be interrupted
    raise Cancelled


def _in_child(run: Callable[[int], object], index: int, result: Path, write_fd: int) -> None:
    """The child: fds 1 and 2 to the pipe, the stage run, its result (or error) written."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, _cancel)
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        try:
            outcome: dict[str, object] = {"result": run(index)}
            code = 0
        except Cancelled:
            outcome = {"cancelled": True}
        except UsageError as e:
            outcome = {"error": str(e), "code": e.exit_code}
        except Exception as e:  # reported by the parent as the build's error
            outcome = {"error": f"{type(e).__name__}: {e}"}
        result.write_text(json.dumps(outcome))
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    except BaseException:  # never run the parent's code after a fork
        code = 1
    finally:
        os._exit(code)


def run_stages(
    order: Sequence[int],
    deps: Mapping[int, set[int]],
    label: Callable[[int], str],
    run: Callable[[int], object],
    adopt: Callable[[int, object], None],
    workdir: Path,
    say: Callable[[str], None] = print,
) -> None:
    """Build each stage of `order` (indexes, in Dockerfile order) once, after those of `deps`
    it needs: `run(index)` builds it and returns its JSON-able result, `adopt(index, result)`
    takes it over in this process. Raises the first failing stage's error."""
    done: set[int] = set()
    pending = list(order)
    children: dict[int, _Child] = {}  # by read fd
    failure: tuple[str, int] | None = None
    selector = selectors.DefaultSelector()
    try:
        while pending or children:
            ready = [i for i in pending if deps.get(i, set()) <= done] if failure is None else []
            if failure is not None:
                pending.clear()
            if ready and not children and len(ready) == 1:
                index = ready[0]
                pending.remove(index)
                adopt(index, run(index))  # alone: in this process, as a sequential build
                done.add(index)
                continue
            for index in ready[: max(0, MAX_PARALLEL - len(children))]:
                pending.remove(index)
                child = _fork(index, run, workdir)
                children[child.fd] = child
                selector.register(child.fd, selectors.EVENT_READ)
            if not children:
                if pending and failure is None and not ready:
                    raise RuntimeError(f"stages {pending} wait for stages that never end")
                continue
            for key, _events in selector.select():
                child = children[int(key.fd)]
                chunk = os.read(child.fd, 1 << 16)
                child.pending += chunk
                *lines, child.pending = child.pending.split(b"\n")
                if not chunk:
                    lines += [child.pending] if child.pending else []
                for line in lines:
                    say(f"[{label(child.index)}] {line.decode(errors='replace')}")
                if chunk:
                    continue
                selector.unregister(child.fd)
                os.close(child.fd)
                del children[child.fd]
                os.waitpid(child.pid, 0)
                outcome = _outcome(child.result)
                if "result" in outcome:
                    adopt(child.index, outcome["result"])
                    done.add(child.index)
                elif failure is None and not outcome.get("cancelled"):
                    code = outcome.get("code")
                    failure = (str(outcome.get("error")), code if isinstance(code, int) else 1)
                    for other in children.values():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(other.pid, signal.SIGTERM)
    finally:
        for child in children.values():  # interrupted here: stop and wait for all of them
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        for child in children.values():
            os.close(child.fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
        selector.close()
    if failure is not None:
        raise StageFailed(*failure)


def _fork(index: int, run: Callable[[int], object], workdir: Path) -> _Child:
    result = workdir / f"stage{index}.json"
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
        os.close(read_fd)
        _in_child(run, index, result, write_fd)
    os.close(write_fd)
    return _Child(index=index, pid=pid, fd=read_fd, result=result)


def _outcome(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"error": "a build stage ended without a result"}
    return data if isinstance(data, dict) else {"error": "a build stage ended without a result"}
