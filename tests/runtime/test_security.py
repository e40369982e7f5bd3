"""A container is a security boundary: capabilities, seccomp, masked and read-only /proc and /sys,
a bare /dev, --privileged, --cap-add/--cap-drop, --security-opt; the same for exec and --init.
The parser of --security-opt (runtime.security) is tested first, without a container.

The expected sets are podman's, as podman 4.3.1 shows them on this machine (`podman run` of the
busybox test image: CapEff/CapPrm/CapBnd `00000000800405fb`, CapInh and CapAmb 0, `Seccomp: 2`;
with `-u 1000` CapPrm and CapEff 0). Two static programs, built here with gcc, play the hostile
image: `probes/escape.c` (the open_by_handle_at escape to the host's filesystem) and
`probes/syscalls.c` (every syscall docker's default profile denies, with harmless arguments).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from runtime import mounts, security
from tests.runtime.conftest import Strata, wait_running
from tests.runtime.test_bad_input import assert_refused, listing
from unionfs.errors import UsageError

PODMAN_CAPS: Final = "00000000800405fb"
PROBES: Final = Path(__file__).parent / "probes"
EPERM: Final = 1


def test_security_opt_values() -> None:
    opts = security.parse_options(
        privileged=False,
        cap_add=["NET_ADMIN,SYS_TIME"],
        cap_drop=[],
        security_opt=["no-new-privileges", "label=disable", "apparmor=unconfined",
                      "seccomp=unconfined", "systempaths=unconfined"],
    )  # fmt: skip
    assert opts.cap_add == ("NET_ADMIN", "SYS_TIME")
    assert (opts.no_new_privileges, opts.seccomp, opts.mask_paths) == (True, "unconfined", False)
    colon = security.parse_options(
        privileged=False, cap_add=[], cap_drop=[], security_opt=["no-new-privileges:false"]
    )
    assert colon.no_new_privileges is False
    relative = security.parse_options(
        privileged=False, cap_add=[], cap_drop=[], security_opt=["seccomp=p.json"]
    )
    assert Path(relative.seccomp).is_absolute()
    for bad in ("label=level:s0", "apparmor=docker-default", "seccomp=", "nope"):
        with pytest.raises(UsageError, match="unknown option"):
            security.parse_options(privileged=False, cap_add=[], cap_drop=[], security_opt=[bad])


@pytest.fixture(scope="session")
def probe_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer holding /escape and /syscalls, built with `gcc -static` (read-only, shared)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing (apt install gcc libc6-dev)")
    layer = tmp_path_factory.mktemp("probes")
    for name in ("escape", "syscalls"):
        subprocess.run(
            [gcc, "-static", "-O1", "-Wall", "-o", str(layer / name), str(PROBES / f"{name}.c")],
            check=True,
            capture_output=True,
        )
    return layer


@pytest.fixture
def image(busybox: list[str], probe_layer: Path) -> list[str]:
    """The busybox image with the probe layer on top."""
    return ["--lower", str(probe_layer), *busybox]


def status_fields(text: str) -> dict[str, str]:
    """`Name:\tvalue` lines of /proc/PID/status."""
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def run_ok(strata: Strata, *args: str) -> str:
    done = strata.run("run", "--rm", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def filesystem_root(path: Path) -> Path:
    """The mount point of the filesystem holding `path`."""
    path = path.resolve()
    dev = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


# ---------------------------------------------------------------------------------------------
# the escape and the syscalls


@pytest.mark.root
@pytest.mark.fuse
def test_open_by_handle_at_escape_is_refused(
    strata: Strata, image: list[str], tmp_path: Path
) -> None:
    refused = strata.run("run", "--rm", *image, "/escape", "/etc/hostname")
    assert (refused.returncode, refused.stdout) == (1, f"errno {EPERM}\n"), refused.stderr
    # The probe is real: a privileged container (no boundary, as with docker) does reach the
    # host's filesystem through it and lists the root directory of the state root's filesystem.
    escaped = strata.run("run", "--rm", "--privileged", *image, "/escape", "/etc/hostname")
    assert escaped.returncode == 0, escaped.stdout + escaped.stderr
    host_root = filesystem_root(strata.root)
    assert set(escaped.stdout.split()) == set(os.listdir(host_root))


@pytest.mark.root
@pytest.mark.fuse
def test_the_syscalls_docker_denies_fail_with_eperm(strata: Strata, image: list[str]) -> None:
    out = run_ok(strata, *image, "/syscalls")
    results = dict(line.split() for line in out.splitlines())
    denied = {name: code for name, code in results.items() if name not in ("clone3", "mkdir")}
    assert len(denied) >= 26
    assert all(code == str(EPERM) for code in denied.values()), denied
    assert results["clone3"] == "38"  # ENOSYS, so that libc falls back to clone
    assert results["mkdir"] == "17"  # EEXIST: an ordinary syscall passes the filter
    # with the capability that makes them legitimate, docker's rules let them through to the
    # kernel, which answers for itself (the arguments are harmless: missing paths, bad fds)
    sys_admin = run_ok(strata, "--cap-add", "SYS_ADMIN", *image, "/syscalls")
    results = dict(line.split() for line in sys_admin.splitlines())
    assert results["mount"] == "2"  # ENOENT
    assert results["setns"] == "9"  # EBADF
    assert results["clone_newns"] == "22"  # EINVAL (CLONE_FS with CLONE_NEWNS)
    assert results["open_by_handle_at"] == str(EPERM)  # still: needs DAC_READ_SEARCH


# ---------------------------------------------------------------------------------------------
# capabilities


@pytest.mark.root
@pytest.mark.fuse
def test_default_capabilities_and_seccomp_are_podmans(strata: Strata, busybox: list[str]) -> None:
    root = status_fields(run_ok(strata, *busybox, "cat", "/proc/self/status"))
    assert root["CapEff"] == root["CapPrm"] == root["CapBnd"] == PODMAN_CAPS
    assert root["CapInh"] == root["CapAmb"] == "0" * 16
    assert (root["Seccomp"], root["NoNewPrivs"]) == ("2", "0")
    user = status_fields(run_ok(strata, "-u", "1000", *busybox, "cat", "/proc/self/status"))
    assert user["CapEff"] == user["CapPrm"] == user["CapInh"] == "0" * 16
    assert (user["CapBnd"], user["Seccomp"]) == (PODMAN_CAPS, "2")


@pytest.mark.root
@pytest.mark.fuse
def test_cap_add_cap_drop_and_privileged(strata: Strata, busybox: list[str]) -> None:
    # NET_ADMIN: change the loopback device of the container's own network namespace
    # (`ip link add dummy0 type dummy` needs the dummy driver, which this kernel lacks)
    script = "ip link set lo mtu 1300 && cat /sys/class/net/lo/mtu"
    without = strata.run("run", "--rm", "--network", "none", *busybox, "/bin/sh", "-c", script)
    assert without.returncode != 0
    assert "Operation not permitted" in without.stderr
    for spelling in ("NET_ADMIN", "cap_net_admin"):
        added = run_ok(strata, "--network", "none", "--cap-add", spelling, *busybox,
                       "/bin/sh", "-c", script)  # fmt: skip
        assert added == "1300\n"
    dropped = status_fields(
        run_ok(strata, "--cap-drop", "ALL", *busybox, "cat", "/proc/self/status")
    )
    assert dropped["CapEff"] == dropped["CapBnd"] == "0" * 16
    one = status_fields(
        run_ok(strata, "--cap-drop", "ALL", "--cap-add", "CAP_KILL", *busybox, "cat",
               "/proc/self/status")
    )  # fmt: skip
    assert one["CapEff"] == f"{1 << 5:016x}"
    minus = status_fields(
        run_ok(strata, "--cap-drop", "chown,SETFCAP", *busybox, "cat", "/proc/self/status")
    )
    assert minus["CapEff"] == f"{0x800405FB & ~1 & ~(1 << 31):016x}"
    with open("/proc/self/status") as f:
        ours = status_fields(f.read())["CapBnd"]
    script = (
        "grep -E '^(CapEff|Seccomp):' /proc/self/status;"
        " mkdir -p /m && mount -t tmpfs t /m && echo mounted;"
        " touch /sys/kernel/x 2>&1 | grep -c 'Read-only';"
        " grep -c ' /proc/keys \\| /proc/sys ' /proc/mounts; true"
    )
    privileged = run_ok(strata, "--privileged", *busybox, "/bin/sh", "-c", script)
    assert privileged.splitlines() == [f"CapEff:\t{ours}", "Seccomp:\t0", "mounted", "0", "0"]


# ---------------------------------------------------------------------------------------------
# seccomp profiles


@pytest.mark.root
@pytest.mark.fuse
def test_a_profile_file_that_denies_mkdir(
    strata: Strata, busybox: list[str], tmp_path: Path
) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ],
            }
        )
    )
    done = strata.run(
        "run", "--rm", "--security-opt", f"seccomp={profile}", *busybox,
        "/bin/sh", "-c", "mkdir /tmp/d; touch /tmp/f && echo touched",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Operation not permitted" in done.stderr
    assert done.stdout == "touched\n"
    unconfined = status_fields(
        run_ok(strata, "--security-opt", "seccomp=unconfined", *busybox, "cat",
               "/proc/self/status")
    )  # fmt: skip
    assert unconfined["Seccomp"] == "0"
    assert unconfined["CapEff"] == PODMAN_CAPS


DOCKER_PROFILE: Final = Path("/var/cache/strata-tests/docker-seccomp-default.json")


@pytest.mark.root
@pytest.mark.fuse
def test_the_default_filter_denies_what_dockers_own_profile_denies(
    strata: Strata, image: list[str]
) -> None:
    """docker's default.json (20.10, as Debian ships it; scripts/setup.sh fetches it) brought
    with --security-opt gives the probe the same answers as strata's default filter, with and
    without CAP_SYS_ADMIN, but for AF_VSOCK sockets, which docker refuses only since 23.0."""
    if not DOCKER_PROFILE.exists():
        pytest.skip(f"{DOCKER_PROFILE} is missing (scripts/setup.sh fetches it as root)")
    for extra in ([], ["--cap-add", "SYS_ADMIN"]):
        ours = run_ok(strata, *extra, *image, "/syscalls")
        docker = run_ok(strata, *extra, "--security-opt", f"seccomp={DOCKER_PROFILE}", *image,
                        "/syscalls")  # fmt: skip
        ours_by_name = dict(line.split() for line in ours.splitlines())
        docker_by_name = dict(line.split() for line in docker.splitlines())
        differ = {k for k in ours_by_name if ours_by_name[k] != docker_by_name[k]}
        assert differ == {"socket_vsock"}, (extra, ours_by_name, docker_by_name)
        assert ours_by_name["socket_vsock"] == str(EPERM)


@pytest.mark.root
@pytest.mark.fuse
def test_docker_format_profile_with_conditions(
    strata: Strata, image: list[str], tmp_path: Path
) -> None:
    """podman's own default profile (docker's format: archMap, includes/excludes by capability)
    when it is installed, read as a user would bring docker's."""
    shipped = Path("/usr/share/containers/seccomp.json")
    if not shipped.exists():
        pytest.skip(f"{shipped} is missing (apt install golang-github-containers-common)")
    opt = f"seccomp={shipped}"
    out = run_ok(strata, "--security-opt", opt, *image, "/syscalls")
    results = dict(line.split() for line in out.splitlines())
    # podman's profile denies these itself; others it leaves to the capabilities
    assert results["swapon"] == results["kexec_load"] == str(EPERM)
    assert results["perf_event_open"] == results["bpf"] == str(EPERM)
    assert results["mkdir"] == "17"
    assert status_fields(
        run_ok(strata, "--security-opt", opt, *image, "cat", "/proc/self/status")
    )["Seccomp"] == "2"  # fmt: skip


# ---------------------------------------------------------------------------------------------
# /proc, /sys, /dev


@pytest.mark.root
@pytest.mark.fuse
def test_proc_sys_and_dev_are_protected(strata: Strata, busybox: list[str]) -> None:
    script = r"""
        echo 1 > /proc/sys/vm/drop_caches && echo wrote-drop-caches
        echo '|/bin/x' > /proc/sys/kernel/core_pattern && echo wrote-core-pattern
        if [ -e /proc/sysrq-trigger ]; then echo h > /proc/sysrq-trigger && echo wrote-sysrq; fi
        head -c 1 /proc/kcore 2>/dev/null | wc -c | sed 's/^ */kcore /'
        for p in /proc/keys /proc/timer_list /proc/acpi /sys/firmware; do
            [ -e $p ] && echo "$p $(cat $p/* $p 2>/dev/null | wc -c)"
        done
        mknod /tmp/sda b 8 0 && echo made-block-device
        mknod /tmp/null c 1 3 && echo made-char-device
        touch /sys/kernel/x || true
        ls /dev | tr '\n' ' '
    """
    done = strata.run("run", "--rm", *busybox, "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith(("wrote", "made"))], lines
    assert "kcore 0" in lines
    hidden = [line for line in lines if line.startswith("/")]
    assert hidden
    assert all(line.endswith(" 0") for line in hidden), hidden
    assert done.stderr.count("Read-only file system") >= 2
    assert done.stderr.count("Operation not permitted") == 2
    dev = set(lines[-1].split())
    assert dev == {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
                   "mqueue", "fd", "stdin", "stdout", "stderr"}  # fmt: skip
    with_tty = strata.run("run", "--rm", "-t", *busybox, "/bin/sh", "-c", "ls /dev/console")
    assert with_tty.stdout.strip() == "/dev/console"


@pytest.mark.root
@pytest.mark.fuse
def test_masked_and_read_only_paths_are_mounted(strata: Strata, busybox: list[str]) -> None:
    out = run_ok(strata, *busybox, "cat", "/proc/self/mountinfo")
    points = {line.split()[4]: line.split()[5] for line in out.splitlines()}
    host_has = [p for p in mounts.MASKED_PATHS if os.path.exists(p)]
    assert host_has
    assert all(p in points for p in host_has), (host_has, sorted(points))
    for path in mounts.READONLY_PATHS:
        if os.path.exists(path):
            assert points[path].startswith("ro"), (path, points[path])
    assert points["/sys"].startswith("ro")


# ---------------------------------------------------------------------------------------------
# --init, exec, no-new-privileges, inspect


@pytest.mark.root
@pytest.mark.fuse
def test_init_shows_nothing_of_the_host_and_is_confined(strata: Strata, busybox: list[str]) -> None:
    script = (
        "od -An -c /proc/1/cmdline | tr -d ' \\n'; echo; cat /proc/1/comm;"
        " cat /proc/1/environ 2>&1 | grep -c 'Permission denied';"
        " ls -l /proc/1/exe 2>&1 | grep -c 'Permission denied';"
        " grep -E '^(CapEff|Seccomp):' /proc/1/status /proc/self/status"
    )
    out = run_ok(strata, "--init", *busybox, "/bin/sh", "-c", script)
    assert out.splitlines() == [
        "strata-init\\0",
        "strata-init",
        "1",
        "1",
        f"/proc/1/status:CapEff:\t{PODMAN_CAPS}",
        "/proc/1/status:Seccomp:\t2",
        f"/proc/self/status:CapEff:\t{PODMAN_CAPS}",
        "/proc/self/status:Seccomp:\t2",
    ]
    user = run_ok(strata, "--init", "-u", "65534", *busybox, "grep", "CapEff", "/proc/self/status")
    assert user == "CapEff:\t" + "0" * 16 + "\n"


@pytest.mark.root
@pytest.mark.fuse
def test_exec_gets_the_containers_confinement(
    strata: Strata, busybox: list[str], tmp_path: Path
) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": '
        '[{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}'
    )
    strata.run(
        "run", "-d", "--name", "box", "--cap-add", "NET_RAW", "--security-opt",
        f"seccomp={profile}", "--security-opt", "no-new-privileges", *busybox, "sleep", "60",
    check=True)  # fmt: skip
    wait_running(strata, "box")
    profile.unlink()  # the container has its own copy, as docker keeps it in its config
    script = "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status; mkdir /tmp/d"
    done = strata.run("exec", "box", "/bin/sh", "-c", script)
    assert done.returncode == 1
    fields = status_fields(done.stdout)
    assert fields == {"CapEff": f"{0x800405FB | 1 << 13:016x}", "NoNewPrivs": "1", "Seccomp": "2"}
    assert "Operation not permitted" in done.stderr
    as_user = strata.run("exec", "-u", "65534", "box", "grep", "CapEff", "/proc/self/status")
    assert as_user.stdout == "CapEff:\t" + "0" * 16 + "\n"
    info = strata.inspect("box")
    host = info["HostConfig"]
    assert isinstance(host, dict)
    assert host["Privileged"] is False
    assert host["CapAdd"] == ["NET_RAW"]
    assert host["Seccomp"] == f"profile {profile}"
    assert host["NoNewPrivileges"] is True
    assert host["MaskedPaths"] == list(mounts.MASKED_PATHS)
    assert "CAP_NET_RAW" in info["EffectiveCaps"]  # type: ignore[operator]
    assert "CAP_SYS_ADMIN" not in info["BoundingCaps"]  # type: ignore[operator]
    strata.run("rm", "-f", "box", check=True)


@pytest.mark.root
@pytest.mark.fuse
def test_inspect_of_a_privileged_container(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "p", "--privileged", *busybox, "true", check=True)
    info = strata.inspect("p")
    host = info["HostConfig"]
    assert isinstance(host, dict)
    assert (host["Privileged"], host["Seccomp"], host["MaskedPaths"]) == (True, "unconfined", [])
    assert "CAP_SYS_ADMIN" in info["EffectiveCaps"]  # type: ignore[operator]
    strata.run("create", "--name", "d", *busybox, "true", check=True)
    default = strata.inspect("d")
    assert default["HostConfig"]["Seccomp"] == "default"  # type: ignore[index]
    assert len(default["EffectiveCaps"]) == 11  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# bad input


BAD: Final = [
    ("unknown capability", ["--cap-add", "NET_WIZARD"], "--cap-add NET_WIZARD: unknown capability"),
    ("unknown drop", ["--cap-drop", "CAP_NOPE"], "--cap-drop CAP_NOPE: unknown capability"),
    ("missing profile", ["--security-opt", "seccomp=/nonexistent.json"], "No such file"),
    ("profile not json", ["--security-opt", "seccomp={bad}"], "not JSON"),
    ("profile bad action", ["--security-opt", "seccomp={action}"], "unknown action"),
    ("unknown option", ["--security-opt", "label=type:foo_t"], "--security-opt label=type:foo_t"),
    ("unknown key", ["--security-opt", "frobnicate"], "unknown option"),
]


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.parametrize(("args", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_security_input_is_one_line_and_changes_nothing(
    strata: Strata, busybox: list[str], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.json").write_text('{"defaultAction": ')
    (tmp_path / "action.json").write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "NO"}]}'
    )
    args = [
        a.replace("{bad}", str(tmp_path / "bad.json")).replace(
            "{action}", str(tmp_path / "action.json")
        )
        for a in args
    ]
    strata.run("create", "--name", "existing", *busybox, "/bin/true", check=True)
    before = listing(strata.root)
    for command in ("run", "create"):
        done = strata.run(command, *args, *busybox, "/bin/true")
        assert_refused(strata, done, 125, message, before)


@pytest.mark.root
@pytest.mark.fuse
def test_label_and_apparmor_opt_outs_are_accepted(strata: Strata, busybox: list[str]) -> None:
    out = run_ok(strata, "--security-opt", "label=disable", "--security-opt",
                 "apparmor=unconfined", *busybox, "grep", "Seccomp:", "/proc/self/status")  # fmt: skip
    assert out == "Seccomp:\t2\n"
