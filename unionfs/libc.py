"""The only home of strata's foreign calls: thin ctypes wrappers over libc.

The union core (renameat2), the mount tools (statfs, umount2) and the runtime (mount, unshare,
setns, pivot_root, capabilities, seccomp, prctl) all call libc through here, so the library
is loaded once and every wrapper fails the same way.

Each wrapper raises `OSError(errno, message, target)` naming what it acted on, so an error that
reaches the command line reads as one line ("mount /c/rootfs/proc: Operation not permitted").
Python 3.11 has no `os.unshare`/`os.setns` (3.12 does) and glibc has no `pivot_root` wrapper, so
pivot_root goes through `syscall(2)` with the number for this machine.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

_libc = ctypes.CDLL(None, use_errno=True)

# mount(2) flags (linux/mount.h)
MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REMOUNT: Final = 0x20
MS_NOATIME: Final = 0x400
MS_NODIRATIME: Final = 0x800
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_SLAVE: Final = 1 << 19
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
MS_SYNCHRONOUS: Final = 0x10

MNT_DETACH: Final = 0x2

# clone/unshare/setns flags (linux/sched.h)
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

PR_SET_PDEATHSIG: Final = 1
PR_SET_DUMPABLE: Final = 4
PR_SET_NAME: Final = 15
PR_SET_SECCOMP: Final = 22
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
SECCOMP_MODE_FILTER: Final = 2

_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

# pivot_root(2) by machine: glibc does not wrap it. (x86_64's 155 is not everyone's.)
_SYS_PIVOT_ROOT: Final[dict[str, int]] = {
    "x86_64": 155,
    "aarch64": 41,
    "riscv64": 41,
    "loongarch64": 41,
    "i386": 217,
    "i686": 217,
    "armv7l": 218,
    "armv6l": 218,
    "ppc64le": 203,
    "ppc64": 203,
    "s390x": 217,
}

_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.capset.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)


def _fail(what: str, target: str | bytes | os.PathLike[str] | None = None) -> OSError:
    err = ctypes.get_errno()
    name = None if target is None else os.fsdecode(target)
    return OSError(err, f"{what}: {os.strerror(err)}", name)


def _b(path: str | bytes | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(
    source: str | os.PathLike[str] | None,
    target: str | bytes | os.PathLike[str],
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2). `source`/`fstype`/`data` may be None (bind mounts, propagation changes)."""
    if (
        _libc.mount(
            _b(source), _b(target), None if fstype is None else fstype.encode(), flags,
            None if data is None else data.encode(),
        )
        != 0
    ):  # fmt: skip
        kind = fstype or ("bind" if flags & MS_BIND else "mount")
        raise _fail(f"mount {kind} (flags {flags:#x}{', ' + data if data else ''})", target)


def umount2(target: str | bytes | os.PathLike[str], flags: int = 0) -> None:
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail("umount", target)


class _Statfs(ctypes.Structure):
    # f_type is the first field (__fsword_t, a long); the rest is not read.
    _fields_ = (("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256))


def statfs_type(path: str | bytes | os.PathLike[str]) -> int:
    """statfs(2) f_type, which os.statvfs does not report."""
    buf = _Statfs()
    if _libc.statfs(_b(path), ctypes.byref(buf)) != 0:
        raise _fail("statfs", path)
    return int(buf.f_type)


RENAME_NOREPLACE: Final = 1 << 0
RENAME_EXCHANGE: Final = 1 << 1
RENAME_WHITEOUT: Final = 1 << 2

_renameat2 = _libc.renameat2
_renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
_renameat2.restype = ctypes.c_int


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int = 0) -> None:
    """renameat2(2) on (dirfd, name) pairs; raises OSError naming the new name."""
    if _renameat2(olddirfd, oldname, newdirfd, newname, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(newname))


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"pivot_root: syscall number unknown on {os.uname().machine}")
    if _libc.syscall(ctypes.c_long(number), _b(new_root), _b(put_old)) != 0:
        raise _fail("pivot_root", new_root)


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise _fail(f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0, *, what: str = "namespace") -> None:
    """Join the namespace open at `fd` (`what` names it in errors, e.g. /proc/42/ns/mnt)."""
    if _libc.setns(fd, nstype) != 0:
        raise _fail("setns", what)


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail("sethostname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    if _libc.prctl(option, arg2, arg3, 0, 0) != 0:
        raise _fail(f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def capset(*, effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) of this process's three capability sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")


def capbset_drop(number: int) -> None:
    """Drop capability `number` from the bounding set."""
    prctl(PR_CAPBSET_DROP, number)


def clear_ambient_caps() -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def set_no_new_privs() -> None:
    """execve() can no longer grant privileges (set-uid bits, file capabilities)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_dumpable(on: bool) -> None:
    """A non-dumpable process cannot be ptraced, and its /proc files (environ, maps, exe, fd)
    are closed to processes without CAP_SYS_PTRACE."""
    prctl(PR_SET_DUMPABLE, int(on))


def set_name(name: str) -> None:
    """The process's `comm` (what ps and /proc/PID/status show as its name; 15 bytes)."""
    raw = ctypes.create_string_buffer(name.encode()[:15])
    prctl(PR_SET_NAME, ctypes.addressof(raw))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load_seccomp_program(program: bytes) -> None:
    """Install a classic-BPF seccomp filter (an array of `struct sock_filter`, as libseccomp's
    seccomp_export_bpf() writes it) on this process and its future children. Needs
    CAP_SYS_ADMIN in the user namespace, or no_new_privs set."""
    if not program or len(program) % 8:
        raise OSError(0, f"seccomp: not a BPF program ({len(program)} bytes)")
    code = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(code))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise _fail("seccomp filter")


def scrub_command_line(title: str) -> None:
    """Overwrite this process's argv and environment memory, which /proc/PID/cmdline and
    /proc/PID/environ show, so that they read `title` and nothing. The kernel reads up to the
    first NUL once the byte at the end of argv is not a NUL (the setproctitle convention)."""
    with open("/proc/self/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields 48-51 of stat(5) (arg_start, arg_end, env_start, env_end); index 0 is field 3
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    if env_end > env_start:
        ctypes.memset(env_start, 0, env_end - env_start)
    size = arg_end - arg_start
    text = title.encode()[: max(size - 2, 0)]
    if size <= 0:
        return
    ctypes.memset(arg_start, 0, size)
    ctypes.memmove(arg_start, text, len(text))
    if size > len(text) + 1:
        ctypes.memset(arg_end - 1, 0x20, 1)


def set_pdeathsig(signum: int) -> None:
    """Ask the kernel to send `signum` to this process when its parent (thread) exits."""
    prctl(PR_SET_PDEATHSIG, signum)


# inotify(7) events (linux/inotify.h)
IN_MODIFY: Final = 0x2
IN_MOVED_TO: Final = 0x80
IN_CREATE: Final = 0x100


def inotify_watch(path: str | os.PathLike[str], mask: int) -> int:
    """A non-blocking, close-on-exec inotify descriptor watching `path` for the events in
    `mask`: it turns readable when one happens, so a reader can wait in select() instead of
    polling. The caller closes it."""
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise _fail("inotify_init1")
    if _libc.inotify_add_watch(fd, _b(path), ctypes.c_uint32(mask)) < 0:
        err = _fail("inotify_add_watch", path)
        os.close(fd)
        raise err
    return int(fd)


def malloc_trim() -> bool:
    """Give the free memory at the top and in the middle of the C heap back to the kernel.

    glibc keeps freed heap memory for reuse; after the union drops thousands of nodes (the
    kernel forgot them), the dicts and strings that lived there would otherwise keep the
    daemon's RSS at its peak. False where libc has no malloc_trim (musl)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(0))
