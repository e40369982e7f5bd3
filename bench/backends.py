"""The backends `strata bench` compares, each mounted fresh for every run and always unmounted.

- plain: no union; the layers' merged content, prepared once as a plain directory.
- overlay: kernel overlayfs (`mount -t overlay`, needs root).
- fuse-overlayfs, unionfs-fuse: the FUSE peers, started the way a user does (they daemonize).
- strata: `strata mount` / `strata umount`, as a user runs them.
- podman: a reference for container start-up only (`podman run --rm` with fuse-overlayfs).

Every union gets a fresh, empty upper (and work) directory per run under the data directory's
`scratch/`, so no run sees another's copy-ups. Unmounting targets only the mount point this
module made, never anything found in the mount table, so other people's mounts are safe.

The FUSE daemon's PID is found, after the mount is live, as the holder of the mount's FUSE
connection (named in /proc/PID/fdinfo of its /dev/fuse fd), or else as the process whose command
line holds our (unique) mount point and which has /dev/fuse open: the process serving the mount,
whatever the program's way of daemonizing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from unionfs.mountinfo import fuse_device_holders, is_mounted, mounts_at

from .data import DataSet

MOUNT_TIMEOUT: Final = 30.0
UNMOUNT_TIMEOUT: Final = 30.0


class BackendError(Exception):
    """A backend could not be mounted or run (one line, recorded as a failed cell)."""


@dataclass(frozen=True, slots=True)
class Mounted:
    """A live backend: the directory to measure and the PID of the FUSE daemon, if any."""

    root: Path
    daemon_pid: int | None


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend: `kind` is "plain", "union" (mounted) or "container" (podman)."""

    name: str
    kind: str
    description: str
    # A `strata` command of another checkout (`--backends NAME=PATH`): strata as that checkout
    # mounts it, for before/after figures in one run.
    program: str | None = None

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None."""
        root = os.geteuid() == 0
        if self.name == "overlay":
            if not root:
                return "kernel overlayfs needs root"
            if not _kernel_has_overlay():
                return "no overlay in /proc/filesystems (modprobe overlay)"
        if self.kind == "union" and self.name != "overlay" and not _fuse_usable():
            return "/dev/fuse is not usable"
        if self.program is not None and not os.access(self.program, os.X_OK):
            return f"{self.program} is not an executable strata command"
        for program in _PROGRAMS.get("strata" if self.program else self.name, ()):
            if shutil.which(program) is None:
                return f"{program} not installed (apt-get install {_PACKAGES[program]})"
        if self.name == "podman" and not root:
            return "the podman reference row runs as root only"
        return None


BACKENDS: Final[tuple[Backend, ...]] = (
    Backend("plain", "plain", "a plain directory holding the merged layers (no union)"),
    Backend("overlay", "union", "kernel overlayfs"),
    Backend("fuse-overlayfs", "union", "fuse-overlayfs (C, libfuse 3)"),
    Backend("unionfs-fuse", "union", "unionfs-fuse -o cow (C, libfuse 2)"),
    Backend("strata", "union", "strata mount (Python, pyfuse3 + trio; passthrough where it can)"),
    Backend("strata-noopen", "union", "strata mount -o passthrough=off (FUSE no-open mode)"),
    Backend("podman", "container", "podman run --rm with fuse-overlayfs (container start only)"),
)
BACKEND_NAMES: Final = tuple(b.name for b in BACKENDS)

_PROGRAMS: Final[dict[str, tuple[str, ...]]] = {
    "overlay": ("mount", "umount"),
    "fuse-overlayfs": ("fuse-overlayfs", "fusermount3"),
    "unionfs-fuse": ("unionfs", "fusermount3"),
    "strata": ("fusermount3",),
    "strata-noopen": ("fusermount3",),
    "podman": ("podman", "fuse-overlayfs", "runc"),
}
_PACKAGES: Final[dict[str, str]] = {
    "mount": "mount",
    "umount": "mount",
    "fuse-overlayfs": "fuse-overlayfs",
    "unionfs": "unionfs-fuse",
    "fusermount3": "fuse3",
    "podman": "podman",
    "runc": "runc",
}


def backend_named(name: str) -> Backend:
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise KeyError(name)


def strata_command() -> list[str]:
    """How to run `strata`: the console script beside this Python, else this Python itself."""
    script = Path(sys.executable).parent / "strata"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from strata.cli import main as m; sys.exit(m())",
    ]


@contextlib.contextmanager
def mounted(backend: Backend, data: DataSet, scratch: Path) -> Iterator[Mounted]:
    """Mount `backend` over the data set's layers with a fresh upper; always unmount.

    `scratch` must not exist yet; it is removed afterwards (also on errors and Ctrl-C).
    """
    if backend.kind == "plain":
        yield Mounted(data.merged, None)
        return
    with mounted_layers(backend, data.lowers, scratch) as mount:
        yield mount


@contextlib.contextmanager
def mounted_layers(backend: Backend, lowers: list[Path], scratch: Path) -> Iterator[Mounted]:
    """Mount the union `backend` over `lowers` (top first) with a fresh upper; always unmount.

    `scratch` must not exist yet; it is removed afterwards (also on errors and Ctrl-C).
    """
    if backend.kind != "union":
        raise BackendError(f"{backend.name} does not mount a union")
    upper, work, mnt = scratch / "upper", scratch / "work", scratch / "mnt"
    try:
        for directory in (upper, work, mnt):
            directory.mkdir(parents=True)
        try:
            with interrupts_deferred():  # a half-done mount must not escape the unmount below
                _mount(backend, lowers, upper, work, mnt)
            _wait_for_mount(mnt)
            yield Mounted(mnt, _daemon_pid(mnt) if backend.name != "overlay" else None)
        finally:
            with interrupts_deferred():
                _unmount(backend, mnt)
    finally:
        with interrupts_deferred():
            remove_tree(scratch)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then raise KeyboardInterrupt.

    Mounting and unmounting must not stop half-way: a mount whose helper was interrupted could
    go live after we gave up on it, and an interrupted unmount leaves it behind. The helpers run
    in sessions of their own (`_helper`), so the terminal's SIGINT does not reach them either.
    Outside the main thread (no signal handlers there) it does nothing.
    """
    caught: list[int] = []

    def note(signum: int, frame: object) -> None:
        caught.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, note)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if caught:
        raise KeyboardInterrupt


def _strata(backend: Backend) -> list[str]:
    """The strata command a strata backend mounts and unmounts with."""
    return [backend.program] if backend.program is not None else strata_command()


def _is_strata(backend: Backend) -> bool:
    return backend.program is not None or backend.name in ("strata", "strata-noopen")


def _mount(backend: Backend, lowers: list[Path], upper: Path, work: Path, mnt: Path) -> None:
    name = backend.name
    lowerdir = ":".join(str(p) for p in lowers)
    options = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    if name == "overlay":
        command = ["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)]
    elif name == "fuse-overlayfs":
        command = ["fuse-overlayfs", "-o", options, str(mnt)]
    elif name == "unionfs-fuse":
        branches = ":".join([f"{upper}=RW", *(f"{p}=RO" for p in lowers)])
        # as root, what fuse-overlayfs and strata do as root; fusermount refuses them otherwise
        options = "cow,use_ino" + (",allow_other,suid,dev" if os.geteuid() == 0 else "")
        command = ["unionfs", "-o", options, branches, str(mnt)]
    elif _is_strata(backend):
        layers = [arg for p in lowers for arg in ("--lower", str(p))]
        command = [*_strata(backend), "mount", *layers, "--upper", str(upper)]
        command += ["--work", str(work), str(mnt)]
        if name == "strata-noopen":
            command += ["-o", "passthrough=off"]
    else:
        raise BackendError(f"unknown backend {name}")
    _run_quietly(command, what=f"mounting {name}")


def _unmount(backend: Backend, mnt: Path) -> None:
    """Unmount our own mount point: the backend's own way, then lazily; wait for the daemon."""
    name = backend.name
    pid = _daemon_pid(mnt) if name not in ("overlay", "plain") else None
    if name == "overlay":
        attempts = [["umount", str(mnt)], ["umount", "-l", str(mnt)]]
    elif _is_strata(backend):
        attempts = [[*_strata(backend), "umount", str(mnt)], ["fusermount3", "-u", "-z", str(mnt)]]
    else:
        attempts = [["fusermount3", "-u", str(mnt)], ["fusermount3", "-u", "-z", str(mnt)]]
    for command in attempts:
        if not is_mounted(mnt):
            break
        _helper(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if is_mounted(mnt):  # cannot happen after a lazy unmount, but never leave it silently
        print(f"strata bench: could not unmount {mnt}; please unmount it", file=sys.stderr)
    if pid is not None:
        _wait_for_exit(pid)


def _wait_for_mount(mnt: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_mounted(mnt):
        if time.monotonic() > deadline:
            raise BackendError(f"{mnt} did not get mounted within {MOUNT_TIMEOUT:g}s")
        time.sleep(0.02)


def _wait_for_exit(pid: int) -> None:
    """Wait until the daemon we found is gone; kill it (by PID) if it outstays the timeout."""
    deadline = time.monotonic() + UNMOUNT_TIMEOUT
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _daemon_pid(mnt: Path) -> int | None:
    """The process serving `mnt`.

    First by the FUSE connection: the mount's minor device number names it, and the kernel
    shows it in the fdinfo of each /dev/fuse fd (unionfs.mountinfo's reader; no stat() of the mount,
    which a hung daemon would hang). Else, on kernels whose fdinfo does not say, the process
    with our unique mount point as one of its arguments and /dev/fuse open.
    """

    entries = mounts_at(mnt)
    if entries:
        pids = {pid for pid, _ in fuse_device_holders(entries[-1].minor)}
        if len(pids) == 1:
            return pids.pop()
    wanted = os.fsencode(mnt)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if wanted not in argv:
                continue
            for fd in os.scandir(Path(entry.path, "fd")):
                if os.readlink(fd.path) == "/dev/fuse":
                    return int(entry.name)
        except OSError:
            continue
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (all its threads) in seconds, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), after "pid (comm)"
    return ticks / os.sysconf("SC_CLK_TCK")


def remove_tree(path: Path) -> None:
    """rm -rf, tolerant of what overlayfs leaves in its work dir (a mode-000 `work/work`)."""
    if path.exists() or path.is_symlink():
        _helper(["rm", "-rf", "--one-file-system", "--", str(path)])


def _run_quietly(command: list[str], *, what: str) -> None:
    """Run a mount helper; its output goes to a file, not a pipe: a daemon that kept the pipe
    open would make us wait for EOF forever."""
    with tempfile.TemporaryFile() as output:
        returncode = _helper(command, stdout=output, stderr=output)
        output.seek(0)
        lines = output.read().decode(errors="replace").strip().splitlines()
    if returncode != 0:
        detail = lines[-1] if lines else f"exit status {returncode}"
        raise BackendError(f"{what}: {detail}")


def _helper(
    command: list[str],
    *,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
) -> int:
    """Run a mount/unmount/clean-up helper in a session of its own (out of reach of the
    terminal's Ctrl-C, see `interrupts_deferred`); its exit status."""
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        check=False,
        start_new_session=True,
    ).returncode


def _kernel_has_overlay() -> bool:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return False
    if any(line.split()[-1:] == ["overlay"] for line in text.splitlines()):
        return True
    return Path("/sys/module/overlay").exists() or shutil.which("modprobe") is not None


def _fuse_usable() -> bool:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True
