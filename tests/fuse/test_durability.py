"""Copy-up is durable (issue 12, finding 7): the copy's data is fsync'ed before it is renamed
into place, and the upper directory after, as overlayfs syncs copy-ups unless `volatile`.

A power loss cannot be staged on this machine (no device-mapper, no spare disk), so the order
of the calls is what is checked, with strace following the daemon and its copy threads: a
rename that the kernel may persist before the data is what left an empty or torn file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.helpers.mounts import (
    StrataMount,
    UnionDirs,
    append_bytes,
    skip_unless_fuse,
    skip_unless_root,
)

pytestmark = [pytest.mark.fuse, pytest.mark.root]


class TracedMount(StrataMount):
    """The daemon under `strace -f`, its fsync and renameat2 calls logged to `trace`."""

    def __init__(self, dirs: UnionDirs, *, trace: Path, **kwargs: object) -> None:
        super().__init__(dirs, **kwargs)  # type: ignore[arg-type]
        self.trace = trace

    @property
    def command(self) -> list[str]:
        strace = shutil.which("strace")
        assert strace is not None
        return [strace, "-f", "-qq", "-e", "trace=fsync,renameat2", "-o", str(self.trace),
                *super().command]  # fmt: skip


def traced_copy_up(tmp_path: Path, *options: str) -> list[str]:
    """The fsync and renameat2 calls of a mount in which one lower file is appended to."""
    skip_unless_root()
    skip_unless_fuse()
    if shutil.which("strace") is None:
        pytest.skip("strace is missing (apt install strace)")
    dirs = UnionDirs.create(tmp_path, nlowers=1)
    (dirs.lowers[0] / "f").write_bytes(b"old\n" * 100_000)  # above INLINE_COPY_MAX: a thread
    trace = tmp_path / "strace.log"
    extra = ["-o", ",".join(options)] if options else []
    # With OPEN/RELEASE (STRATA_FUSE_OPEN=1, or the stock pyfuse3) the RELEASE of the appended file can still be in
    # the daemon, slowed by strace, when the kernel ends the connection at the unmount: pyfuse3
    # then logs that its reply failed (as in tests/fuse/test_file_io.py).
    late_release = [r"fuse_release\(\): fuse_reply_\* failed"]
    with TracedMount(
        dirs,
        trace=trace,
        log_path=tmp_path / "daemon.log",
        extra_args=extra,
        allowed_log_errors=late_release,
    ) as m:
        append_bytes(m.mnt / "f", b"new\n")
    assert dirs.upper is not None
    assert (dirs.upper / "f").read_bytes() == b"old\n" * 100_000 + b"new\n"
    return [
        line for line in trace.read_text().splitlines() if "fsync(" in line or "renameat2(" in line
    ]


def test_the_copy_is_synced_before_its_rename_and_the_directory_after(tmp_path: Path) -> None:
    calls = traced_copy_up(tmp_path)
    into_place = [
        i for i, c in enumerate(calls) if re.search(r'renameat2\(.*"f", RENAME_NOREPLACE\) = 0', c)
    ]
    assert len(into_place) == 1, calls
    before = [c for c in calls[: into_place[0]] if "fsync(" in c and "= 0" in c]
    after = [c for c in calls[into_place[0] + 1 :] if "fsync(" in c and "= 0" in c]
    assert before, calls  # the copy's data
    assert after, calls  # the upper directory, with the new name in it


def test_volatile_skips_the_syncs(tmp_path: Path) -> None:
    calls = traced_copy_up(tmp_path, "volatile")
    assert any("RENAME_NOREPLACE" in c for c in calls), calls
    assert not [c for c in calls if "fsync(" in c], calls
