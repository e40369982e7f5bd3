"""Seccomp: the default filter, profiles in docker's JSON format, and their compiled programs.

A profile is docker's `--security-opt seccomp=FILE` format (a default action, an `archMap`, and
syscall rules that may depend on the container's capabilities, the machine and the kernel) or the
OCI runtime spec's `linux.seccomp` object (`architectures` instead of `archMap`, no conditions).
`DEFAULT` is strata's own statement of the policy of docker's default profile: an allow-list of
the ordinary syscalls; the ones that reach across the container's boundary (mount, namespaces,
keys, modules, kexec, BPF, perf, raw I/O, the clock, open_by_handle_at, ...) only with the
capability that makes them legitimate; everything else fails with EPERM (clone3 with ENOSYS
without CAP_SYS_ADMIN, so that the C library falls back to clone, whose flags can be checked).

libseccomp compiles a profile for one capability set into a classic BPF program (through the
`pyseccomp` binding; no BPF is written by hand). Programs are cached by content under the state
root, so a container start loads a few hundred bytes with one prctl() and imports nothing;
compiling, with its import of the binding, happens once per profile, capability set and kernel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

# The version of the compiled program's cache key: bump it when compile() changes its output.
_CACHE_FORMAT: Final = "strata-seccomp-2"

ACTIONS: Final = frozenset(
    {
        "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG", "SCMP_ACT_TRACE",
    }
)  # fmt: skip
OPERATORS: Final = (
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)  # fmt: skip
EPERM: Final = 1
ENOSYS: Final = 38
_ATTR_OPTIMIZE: Final = 8  # SCMP_FLTATR_CTL_OPTIMIZE (libseccomp >= 2.5)

# The machine as uname(2) names it -> the name docker's `arches` conditions use (Go's GOARCH),
# and the libseccomp architecture of its native ABI.
_GO_ARCH: Final = {
    "x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
    "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
    "mips64": "mips64", "loongarch64": "loong64",
}  # fmt: skip
_NATIVE_ARCH: Final = {
    "x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "armv7l": "SCMP_ARCH_ARM",
    "armv6l": "SCMP_ARCH_ARM", "i686": "SCMP_ARCH_X86", "i386": "SCMP_ARCH_X86",
    "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64",
    "mips64": "SCMP_ARCH_MIPS64",
}  # fmt: skip
# Other ABIs a native program may use (32-bit x86 on x86_64, ...): their syscalls are filtered
# too, instead of killing the process as an unknown architecture.
_SUB_ARCHES: Final = {
    "SCMP_ARCH_X86_64": ("SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "SCMP_ARCH_AARCH64": ("SCMP_ARCH_ARM",),
    "SCMP_ARCH_S390X": ("SCMP_ARCH_S390",),
    "SCMP_ARCH_MIPS64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"),
}


@dataclass(frozen=True, slots=True)
class ArgCondition:
    """Argument `index` compared with `value`; for SCMP_CMP_MASKED_EQ `value` is the mask and
    `value_two` what the masked argument must equal (docker's and libseccomp's order)."""

    index: int
    value: int
    op: str
    value_two: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    """`action` for the syscalls `names`, where the conditions hold: every capability of `caps`
    in the container's set and none of `not_caps`; the machine in `arches` (if any) and not in
    `not_arches`; a kernel at least `min_kernel`."""

    names: tuple[str, ...]
    action: str = "SCMP_ACT_ALLOW"
    errno_ret: int | None = None
    args: tuple[ArgCondition, ...] = ()
    caps: tuple[str, ...] = ()
    not_caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    not_arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None

    def applies(self, caps: frozenset[str], machine: str, kernel: tuple[int, int]) -> bool:
        arch = _GO_ARCH.get(machine, machine)
        if any(c not in caps for c in self.caps) or any(c in caps for c in self.not_caps):
            return False
        if (self.arches and arch not in self.arches) or arch in self.not_arches:
            return False
        return self.min_kernel is None or kernel >= self.min_kernel


@dataclass(frozen=True, slots=True)
class Profile:
    default_action: str
    default_errno: int | None = None
    rules: tuple[Rule, ...] = ()
    # architectures the filter covers besides the native one (SCMP_ARCH_* names); None: the
    # native one's usual companions (_SUB_ARCHES)
    architectures: tuple[str, ...] | None = None

    def key(self) -> str:
        """A digest of everything the compiled program depends on in the profile."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the default profile


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ALLOWED: Final = {
    "files and directories": _names(
        """access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat chown chown32
        fchown fchown32 fchownat lchown lchown32 creat open openat openat2 close close_range dup
        dup2 dup3 fcntl fcntl64 flock fsync fdatasync sync syncfs sync_file_range fallocate
        ftruncate ftruncate64 truncate truncate64 link linkat symlink symlinkat unlink unlinkat
        rename renameat renameat2 mkdir mkdirat mknod mknodat rmdir readlink readlinkat stat
        stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx statfs statfs64 fstatfs
        fstatfs64 getdents getdents64 umask utime utimes utimensat utimensat_time64 futimesat
        name_to_handle_at fadvise64 fadvise64_64 readahead copy_file_range sendfile sendfile64
        splice tee vmsplice lseek _llseek"""
    ),
    "reading and writing": _names(
        "read write readv writev pread64 pwrite64 preadv preadv2 pwritev pwritev2"
    ),
    "extended attributes": _names(
        """getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr listxattr llistxattr
        flistxattr removexattr lremovexattr fremovexattr"""
    ),
    "waiting for events": _names(
        """select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64 epoll_create
        epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2
        eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_gettime timerfd_gettime64
        timerfd_settime timerfd_settime64 inotify_init inotify_init1 inotify_add_watch
        inotify_rm_watch fanotify_mark"""
    ),
    "asynchronous I/O": _names(
        """io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents
        io_pgetevents_time64 io_uring_setup io_uring_enter io_uring_register"""
    ),
    "memory": _names(
        """brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall
        munlock munlockall remap_file_pages membarrier memfd_create memfd_secret pkey_alloc
        pkey_free pkey_mprotect"""
    ),
    "processes": _names(
        """fork vfork execve execveat exit exit_group wait4 waitid waitpid kill tkill tgkill
        pidfd_open pidfd_send_signal process_mrelease getpid getppid gettid getpgid getpgrp
        setpgid getsid setsid getpriority setpriority prctl get_robust_list set_robust_list
        set_tid_address get_thread_area set_thread_area rseq restart_syscall seccomp getrusage
        getrlimit setrlimit prlimit64 ugetrlimit times ioprio_get ioprio_set getcpu capget
        capset"""
    ),
    "scheduling": _names(
        """sched_getaffinity sched_setaffinity sched_getattr sched_setattr sched_getparam
        sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max
        sched_get_priority_min sched_rr_get_interval sched_rr_get_interval_time64 sched_yield"""
    ),
    "users and groups": _names(
        """getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid
        getresuid32 getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32
        setreuid setreuid32 setregid setregid32 setresuid setresuid32 setresgid setresgid32
        setfsuid setfsuid32 setfsgid setfsgid32 setgroups setgroups32"""
    ),
    "signals": _names(
        """rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
        rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sigaltstack sigprocmask
        sigreturn pause alarm"""
    ),
    "clocks and timers (reading; adjtimex changes need CAP_SYS_TIME in the kernel)": _names(
        """clock_gettime clock_gettime64 clock_getres clock_getres_time64 clock_nanosleep
        clock_nanosleep_time64 nanosleep gettimeofday time getitimer setitimer timer_create
        timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
        timer_settime64 adjtimex clock_adjtime clock_adjtime64"""
    ),
    "futexes": _names("futex futex_time64 futex_waitv"),
    "System V and POSIX IPC, pipes": _names(
        """ipc msgctl msgget msgrcv msgsnd semctl semget semop semtimedop semtimedop_time64 shmat
        shmctl shmdt shmget mq_open mq_unlink mq_getsetattr mq_notify mq_timedreceive
        mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 pipe pipe2"""
    ),
    "sockets (socket itself below)": _names(
        """socketcall socketpair bind connect listen accept accept4 getsockname getpeername
        getsockopt setsockopt shutdown send sendto sendmsg sendmmsg recv recvfrom recvmsg
        recvmmsg recvmmsg_time64"""
    ),
    "the system, read-only; Landlock (it only restricts)": _names(
        """uname sysinfo getrandom ioctl landlock_add_rule landlock_create_ruleset
        landlock_restrict_self"""
    ),
}

# Syscalls that are legitimate only with a capability: allowed when the container has it.
_WITH_CAPABILITY: Final = {
    "DAC_READ_SEARCH": "open_by_handle_at",
    "SYS_ADMIN": """bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
        mount mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd
        setdomainname sethostname setns syslog umount umount2 unshare""",
    "SYS_BOOT": "reboot",
    "SYS_CHROOT": "chroot",
    "SYS_MODULE": "delete_module init_module finit_module",
    "SYS_PACCT": "acct",
    "SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    "SYS_RAWIO": "iopl ioperm",
    "SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "SYS_TTY_CONFIG": "vhangup",
    "SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    "SYSLOG": "syslog",
    "BPF": "bpf",
    "PERFMON": "perf_event_open",
}

# Syscalls of one architecture only.
_ARCH_ONLY: Final = (
    (("ppc64le",), "sync_file_range2 swapcontext"),
    (("arm", "arm64"), "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint "
                       "cacheflush set_tls"),
    (("amd64", "x32"), "arch_prctl"),
    (("amd64", "x32", "x86"), "modify_ldt"),
    (("s390", "s390x"), "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    (("riscv64",), "riscv_flush_icache"),
)  # fmt: skip

AF_VSOCK: Final = 40
# personality(2) domains a program may switch to: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE (and
# both), and 0xffffffff, which only asks for the current one.
_PERSONALITIES: Final = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# clone(2) flags that make new namespaces: only with CAP_SYS_ADMIN.
CLONE_NAMESPACE_FLAGS: Final = 0x7E020000


def _default_rules() -> tuple[Rule, ...]:
    rules = [Rule(tuple(n for group in _ALLOWED.values() for n in group))]
    # ptrace and process_vm_* are safe on kernels >= 4.8 (seccomp is checked after ptrace)
    rules.append(Rule(_names("process_vm_readv process_vm_writev ptrace"), min_kernel=(4, 8)))
    rules.append(Rule(("socket",), args=(ArgCondition(0, AF_VSOCK, "SCMP_CMP_NE"),)))
    rules += [
        Rule(("personality",), args=(ArgCondition(0, p, "SCMP_CMP_EQ"),)) for p in _PERSONALITIES
    ]
    rules += [Rule(_names(names), arches=arches) for arches, names in _ARCH_ONLY]
    rules += [Rule(_names(names), caps=(cap,)) for cap, names in _WITH_CAPABILITY.items()]
    no_new_namespaces = ArgCondition(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)
    rules.append(
        Rule(("clone",), args=(no_new_namespaces,), not_caps=("SYS_ADMIN",),
             not_arches=("s390", "s390x"))
    )  # fmt: skip
    rules.append(  # s390 passes clone's flags second
        Rule(("clone",), args=(ArgCondition(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
             not_caps=("SYS_ADMIN",), arches=("s390", "s390x"))
    )  # fmt: skip
    rules.append(
        Rule(("clone3",), action="SCMP_ACT_ERRNO", errno_ret=ENOSYS, not_caps=("SYS_ADMIN",))
    )
    return tuple(rules)


DEFAULT: Final = Profile(default_action="SCMP_ACT_ERRNO", default_errno=EPERM,
                         rules=_default_rules())  # fmt: skip


# ---------------------------------------------------------------------------------------------
# reading a profile file


class ProfileError(UsageError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"seccomp profile {where}: {message}", 125)


def _strings(value: object, what: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(where, f"{what} must be a list of strings")
    return tuple(value)


def _int(value: object, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ProfileError(where, f"{what} must be an unsigned integer")
    return value


def _action(value: object, where: str) -> str:
    if value not in ACTIONS:
        if value == "SCMP_ACT_NOTIFY":
            raise ProfileError(where, "SCMP_ACT_NOTIFY is not supported")
        raise ProfileError(where, f"unknown action {value!r}")
    assert isinstance(value, str)
    return value


def _kernel_version(text: str) -> tuple[int, int] | None:
    parts = text.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def _rule(data: object, where: str) -> Rule:
    if not isinstance(data, dict):
        raise ProfileError(where, "each syscalls entry must be an object")
    names = _strings(data.get("names"), "names", where)
    if isinstance(data.get("name"), str):  # docker's older one-name form
        names += (data["name"],)
    if not names:
        raise ProfileError(where, "a syscalls entry has no names")
    args = []
    for arg in data.get("args") or []:
        if not isinstance(arg, dict):
            raise ProfileError(where, "args entries must be objects")
        index = _int(arg.get("index"), "args index", where)
        if index > 5:
            raise ProfileError(where, f"args index {index}: syscalls have 6 arguments")
        if arg.get("op") not in OPERATORS:
            raise ProfileError(where, f"unknown operator {arg.get('op')!r}")
        args.append(
            ArgCondition(
                index,
                _int(arg.get("value", 0), "args value", where),
                str(arg["op"]),
                _int(arg.get("valueTwo", 0), "args valueTwo", where),
            )
        )
    includes = data.get("includes") or {}
    excludes = data.get("excludes") or {}
    if not isinstance(includes, dict) or not isinstance(excludes, dict):
        raise ProfileError(where, "includes and excludes must be objects")
    min_kernel = None
    if includes.get("minKernel"):
        min_kernel = _kernel_version(str(includes["minKernel"]))
        if min_kernel is None:
            raise ProfileError(where, f"bad minKernel {includes['minKernel']!r}")
    errno_ret = data.get("errnoRet")
    return Rule(
        names=names,
        action=_action(data.get("action"), where),
        errno_ret=None if errno_ret is None else _int(errno_ret, "errnoRet", where),
        args=tuple(args),
        caps=tuple(c.upper().removeprefix("CAP_") for c in _strings(includes.get("caps"), "caps", where)),
        not_caps=tuple(c.upper().removeprefix("CAP_") for c in _strings(excludes.get("caps"), "caps", where)),
        arches=_strings(includes.get("arches"), "arches", where),
        not_arches=_strings(excludes.get("arches"), "arches", where),
        min_kernel=min_kernel,
    )  # fmt: skip


def parse_profile(text: str | bytes, where: str) -> Profile:
    """A profile in docker's or the OCI runtime spec's JSON format; ProfileError (one line)
    when it is not one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProfileError(where, f"not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(data, dict):
        raise ProfileError(where, "not a JSON object")
    if "defaultAction" not in data:
        raise ProfileError(where, "no defaultAction")
    if data.get("flags"):
        raise ProfileError(where, "filter flags are not supported")
    if data.get("listenerPath"):
        raise ProfileError(where, "listenerPath (SCMP_ACT_NOTIFY) is not supported")
    machine = os.uname().machine
    native = _NATIVE_ARCH.get(machine, "")
    architectures: tuple[str, ...] | None = None
    arch_map = data.get("archMap")
    if arch_map is not None:
        if not isinstance(arch_map, list):
            raise ProfileError(where, "archMap must be a list")
        architectures = ()
        for entry in arch_map:
            if isinstance(entry, dict) and entry.get("architecture") == native:
                architectures = _strings(entry.get("subArchitectures"), "subArchitectures", where)
    elif data.get("architectures") is not None:
        architectures = tuple(
            a for a in _strings(data["architectures"], "architectures", where) if a != native
        )
    syscalls = data.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ProfileError(where, "syscalls must be a list")
    default_errno = data.get("defaultErrnoRet")
    return Profile(
        default_action=_action(data["defaultAction"], where),
        default_errno=None if default_errno is None else _int(default_errno, "defaultErrnoRet", where),
        rules=tuple(_rule(entry, where) for entry in syscalls),
        architectures=architectures,
    )  # fmt: skip


def read_profile(path: str) -> tuple[Profile, bytes]:
    """A profile file and its bytes; ProfileError (exit 125) if missing or invalid."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4 << 20)
    except OSError as exc:
        raise ProfileError(path, exc.strerror or str(exc)) from None
    return parse_profile(raw, path), raw


# ---------------------------------------------------------------------------------------------
# compiling


def _running_kernel() -> tuple[int, int]:
    return _kernel_version(os.uname().release) or (0, 0)


def compile_program(profile: Profile, caps: frozenset[str], *, where: str = "default") -> bytes:
    """The profile for a container with capabilities `caps`, as a BPF program (libseccomp)."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 is missing
        raise UsageError(f"seccomp: libseccomp is not available ({exc})", 125) from None

    def action_value(action: str, errno_ret: int | None) -> int:
        if action == "SCMP_ACT_ERRNO":
            return int(sc.ERRNO(EPERM if errno_ret is None else errno_ret))
        if action == "SCMP_ACT_TRACE":
            return int(sc.TRACE(EPERM if errno_ret is None else errno_ret))
        values: Mapping[str, int] = {
            "SCMP_ACT_ALLOW": sc.ALLOW, "SCMP_ACT_KILL": sc.KILL,
            "SCMP_ACT_KILL_THREAD": sc.KILL_THREAD, "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS,
            "SCMP_ACT_TRAP": sc.TRAP, "SCMP_ACT_LOG": sc.LOG,
        }  # fmt: skip
        return values[action]

    machine = os.uname().machine
    kernel = _running_kernel()
    default = action_value(profile.default_action, profile.default_errno)
    filt = sc.SyscallFilter(default)
    with contextlib.suppress(OSError):  # libseccomp < 2.5 has only the linear filter
        # a binary search on the syscall number instead of a list: the kernel emulates the filter
        # for every syscall when it is loaded (to cache what it always allows), and that
        # emulation is most of the load's 1.6-3.5 ms; measured 0.8 ms less per start
        filt.set_attr(_ATTR_OPTIMIZE, 2)
    native = _NATIVE_ARCH.get(machine)
    arches = (
        profile.architectures
        if profile.architectures is not None
        else _SUB_ARCHES.get(native or "", ())
    )
    for arch in arches:
        number = getattr(sc.Arch, arch.removeprefix("SCMP_ARCH_"), None)
        if number is None:
            raise ProfileError(where, f"unknown architecture {arch!r}")
        with contextlib.suppress(OSError):  # EEXIST: the native one
            filt.add_arch(number)
    ops = {name: getattr(sc, name.removeprefix("SCMP_CMP_")) for name in OPERATORS}
    for rule in profile.rules:
        if not rule.applies(caps, machine, kernel):
            continue
        action = action_value(rule.action, rule.errno_ret)
        if action == default:
            continue  # libseccomp refuses a rule that repeats the default
        conditions = [sc.Arg(a.index, ops[a.op], a.value, a.value_two) for a in rule.args]
        indexes = [a.index for a in rule.args]
        # libseccomp ANDs the conditions of a rule but cannot compare one argument twice; such
        # conditions are ORed instead, one rule each (what runc does with docker's profiles)
        groups = [[c] for c in conditions] if len(set(indexes)) < len(indexes) else [conditions]
        for name in rule.names:
            number = sc.resolve_syscall(sc.Arch.NATIVE, name)
            if number == -1:  # unknown to this libseccomp: docker skips these too
                continue
            for group in groups:
                try:
                    filt.add_rule(action, number, *group)
                except OSError as exc:
                    raise ProfileError(where, f"rule for {name}: {exc.strerror}") from None
    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


def cache_key(profile: Profile, caps: Iterable[str]) -> str:
    uname = os.uname()
    text = "\n".join((_CACHE_FORMAT, profile.key(), ",".join(sorted(caps)), uname.machine,
                      uname.release))  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def program(
    profile: Profile, caps: frozenset[str], cache_dir: Path | None, *, where: str = "default"
) -> bytes:
    """The compiled program, from `cache_dir` when it was compiled before (then nothing is
    imported); compiled and stored there otherwise (a cache that cannot be written is skipped)."""
    path = None
    if cache_dir is not None:
        path = cache_dir / f"{cache_key(profile, caps)}.bpf"
        with contextlib.suppress(OSError):
            return path.read_bytes()
    code = compile_program(profile, caps, where=where)
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(code)
            os.rename(tmp, path)
    return code


__all__ = ["DEFAULT", "ArgCondition", "Profile", "ProfileError", "Rule"]
