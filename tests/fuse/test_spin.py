"""The daemon's poll of /dev/fuse between requests (`-o spin=US`, with the pyfuse3 patch).

After serving a request the daemon keeps reading the (non-blocking) FUSE fd for a while before it
sleeps, because waking it for the next request costs as much as serving it. That must not cost
anything else: an idle daemon sleeps, and a client that keeps the daemon busy with a stream of
requests must not starve work the daemon handed to a thread (a big copy-up) on behalf of another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.mounts import StrataMount, StrataMountFactory, UnionDirs
from unionfs.copyup import INLINE_COPY_MAX
from unionfs.ops import FEATURES

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not FEATURES.spin, reason="stock pyfuse3: no set_spin (FEATURES.spin, scripts/pyfuse3)"
    ),
]

# A client that sends one uncached request (GETXATTR) after another until `stop` exists, for
# at most 20 s; exit status 0 if it was stopped, 3 if it ran out of time.
HAMMER = textwrap.dedent(
    """
    import os, sys, time
    path, stop, started = sys.argv[1:]
    open(started, "w").close()
    end = time.monotonic() + 20
    while not os.path.exists(stop):
        if time.monotonic() > end:
            sys.exit(3)
        try:
            os.getxattr(path, "user.nothing")
        except OSError:
            pass
    """
)


def daemon_threads(m: StrataMount) -> dict[int, tuple[str, int]]:
    """tid -> (state letter, context switches so far) of each of the daemon's threads."""
    assert m.proc is not None
    found = {}
    for tid in os.listdir(f"/proc/{m.proc.pid}/task"):
        task = Path(f"/proc/{m.proc.pid}/task/{tid}")
        try:
            state = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
            status = task.joinpath("status").read_text().splitlines()
        except OSError:
            continue  # a thread that ended
        switches = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        found[int(tid)] = (state, switches)
    return found


@pytest.mark.parametrize("spin", ["100", "100000"])
def test_a_stream_of_requests_does_not_starve_a_copy_up_in_a_thread(
    union_mount: StrataMountFactory, tmp_path: Path, spin: str
) -> None:
    """A copy-up bigger than INLINE_COPY_MAX runs in a thread; its end is seen by the daemon
    only when the task serving the stream of GETXATTRs yields to trio. Without that yield the
    write below would wait for the hammer to stop, which it never does on its own."""
    dirs = UnionDirs.create(tmp_path, nlowers=1)
    big = dirs.lowers[0] / "big"
    with open(big, "wb") as f:
        f.write(os.urandom(4 * INLINE_COPY_MAX) + b"tail")
    (dirs.lowers[0] / "x").write_bytes(b"x")
    stop, started = tmp_path / "stop", tmp_path / "started"
    with union_mount(dirs, extra_args=["-o", f"spin={spin}"]) as m:
        hammer = subprocess.Popen(
            [sys.executable, "-c", HAMMER, str(m.mnt / "x"), str(stop), str(started)]
        )
        try:
            while not started.exists() and hammer.poll() is None:
                os.sched_yield()
            for round_ in range(5):
                with open(m.mnt / "big", "r+b") as f:  # the first round copies up
                    f.seek(0, os.SEEK_END)
                    f.write(b"+%d" % round_)
            assert hammer.poll() is None, "the hammer stopped before the writes were done"
        finally:
            stop.touch()
            status = hammer.wait()
        assert status == 0, "the copy-up waited for the stream of requests to end"
        assert (m.mnt / "big").read_bytes().endswith(b"tail+0+1+2+3+4")
    assert dirs.upper is not None
    assert (dirs.upper / "big").stat().st_size == big.stat().st_size + 10


def test_an_idle_daemon_sleeps(union_mount: StrataMountFactory, tmp_path: Path) -> None:
    """After a burst of requests (where the poll pays) the daemon goes back to sleep, not a
    spinning core: soon two looks in a row find every one of its threads asleep, none having run
    in between (a thread that ran has made a context switch since)."""
    dirs = UnionDirs.create(tmp_path, nlowers=1)
    (dirs.lowers[0] / "x").write_bytes(b"x")
    with union_mount(dirs, extra_args=["-o", "spin=1000"]) as m:
        for _ in range(2000):
            try:
                os.getxattr(m.mnt / "x", "user.nothing")
            except OSError:
                pass
        deadline = time.monotonic() + 10
        last: dict[int, tuple[str, int]] = {}
        while True:
            now = daemon_threads(m)
            if now == last and all(state == "S" for state, _ in now.values()):
                break
            assert time.monotonic() < deadline, f"the idle daemon does not sleep: {now}"
            last = now
            time.sleep(0.01)  # the interval between two looks, not a guess at readiness
