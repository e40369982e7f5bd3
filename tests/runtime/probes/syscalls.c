/* Calls each syscall that docker's default seccomp profile denies to a container without the
 * matching capability, with arguments that make it fail harmlessly (or do nothing) where it is
 * allowed, and prints "NAME ERRNO" per call (0: it succeeded). Nothing here can change the host:
 * bad magic numbers, missing paths, invalid fds and flags, or no-op requests. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PROBE(name, ...)                                           \
    do {                                                           \
        errno = 0;                                                 \
        long r = syscall(__VA_ARGS__);                             \
        printf("%s %d\n", name, r == -1 ? errno : 0);              \
    } while (0)

int main(void) {
    char handle[16] = {8, 0, 0, 0, 1, 0, 0, 0};
    PROBE("open_by_handle_at", SYS_open_by_handle_at, 0, handle, 0);
    PROBE("mount", SYS_mount, "none", "/nonexistent-strata-probe", "tmpfs", 0, 0);
    PROBE("umount2", SYS_umount2, "/nonexistent-strata-probe", 0);
    PROBE("pivot_root", SYS_pivot_root, "/nonexistent-strata-probe", "/nonexistent-strata-probe");
    PROBE("setns", SYS_setns, -1, 0);
    PROBE("unshare", SYS_unshare, CLONE_NEWNS);
    /* CLONE_FS with CLONE_NEWNS is EINVAL where namespaces may be made: no child is made */
    PROBE("clone_newns", SYS_clone, CLONE_NEWNS | CLONE_FS | 0x11 /* SIGCHLD */, 0, 0, 0, 0);
    PROBE("keyctl", SYS_keyctl, 0 /* GET_KEYRING_ID */, -1 /* thread keyring */, 0);
    PROBE("add_key", SYS_add_key, 0, 0, 0, 0, 0);
    PROBE("request_key", SYS_request_key, 0, 0, 0, 0);
    PROBE("bpf", SYS_bpf, -1, 0, 0);
    PROBE("perf_event_open", SYS_perf_event_open, 0, -1, -1, -1, 0);
    PROBE("kexec_load", SYS_kexec_load, 0, 0, 0, 0xdead0000);
    PROBE("kexec_file_load", SYS_kexec_file_load, -1, -1, 0, 0, 0xdead0000);
    PROBE("init_module", SYS_init_module, 0, 0, "");
    PROBE("finit_module", SYS_finit_module, -1, "", 0);
    PROBE("delete_module", SYS_delete_module, "strata_no_such_module", 0);
    PROBE("reboot", SYS_reboot, 0, 0, 0, 0); /* bad magic: EINVAL where allowed */
    PROBE("swapon", SYS_swapon, "/nonexistent-strata-probe", 0);
    PROBE("swapoff", SYS_swapoff, "/nonexistent-strata-probe");
    PROBE("acct", SYS_acct, "/nonexistent-strata-probe");
    PROBE("userfaultfd", SYS_userfaultfd, -1);
    PROBE("clock_settime", SYS_clock_settime, -1, 0);
    PROBE("settimeofday", SYS_settimeofday, 0, 0);
    PROBE("personality_bsd", SYS_personality, 0x0006 /* PER_BSD */);
#ifdef SYS_iopl
    PROBE("iopl", SYS_iopl, 0);
    PROBE("ioperm", SYS_ioperm, 0, 0, 0);
#endif
    PROBE("socket_vsock", SYS_socket, 40 /* AF_VSOCK */, 1, 0);
    PROBE("clone3", SYS_clone3, 0, 0);
    PROBE("mkdir", SYS_mkdirat, AT_FDCWD, "/tmp", 0755); /* EEXIST: allowed by the default */
    return 0;
}
