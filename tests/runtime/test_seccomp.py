"""runtime.seccomp: profiles (docker's own and the OCI format) read with their conditions, and
their compiled programs, cached by content. No container runs here (tests/runtime/test_security.py
runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime import capabilities, seccomp

DOCKER_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW", "args": []},
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["no_such_syscall_anywhere"], "action": "SCMP_ACT_ALLOW"},
        {"name": "getpid", "action": "SCMP_ACT_ALLOW"},
    ],
}


def test_docker_profile_is_read_with_its_conditions() -> None:
    profile = seccomp.parse_profile(json.dumps(DOCKER_PROFILE), "docker.json")
    assert profile.default_action == "SCMP_ACT_ERRNO"
    clone, mount = profile.rules[1], profile.rules[2]
    assert clone.args == (seccomp.ArgCondition(0, 2114060288, "SCMP_CMP_MASKED_EQ", 0),)
    assert clone.not_caps == ("SYS_ADMIN",)
    assert mount.caps == ("SYS_ADMIN",)
    assert profile.rules[4].names == ("getpid",)
    assert mount.applies(frozenset({"SYS_ADMIN"}), "x86_64", (6, 1))
    assert not mount.applies(frozenset(), "x86_64", (6, 1))
    assert not clone.applies(frozenset({"SYS_ADMIN"}), "x86_64", (6, 1))
    old = seccomp.Rule(("ptrace",), min_kernel=(4, 8))
    assert old.applies(frozenset(), "x86_64", (4, 8))
    assert not old.applies(frozenset(), "x86_64", (4, 4))
    amd64 = seccomp.Rule(("arch_prctl",), arches=("amd64",))
    assert amd64.applies(frozenset(), "x86_64", (6, 1))
    assert not amd64.applies(frozenset(), "aarch64", (6, 1))


def test_programs_depend_on_capabilities_and_skip_unknown_names() -> None:
    profile = seccomp.parse_profile(json.dumps(DOCKER_PROFILE), "docker.json")
    plain = seccomp.compile_program(profile, frozenset())
    admin = seccomp.compile_program(profile, frozenset({"SYS_ADMIN"}))
    assert plain
    assert len(plain) % 8 == 0  # struct sock_filter is 8 bytes
    assert plain != admin
    default = seccomp.compile_program(seccomp.DEFAULT, capabilities.DEFAULT)
    assert len(default) > len(plain)


def test_oci_profile_format() -> None:
    oci = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    profile = seccomp.parse_profile(json.dumps(oci), "oci.json")
    assert profile.rules[0].errno_ret == 13
    assert seccomp.compile_program(profile, frozenset())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "not a JSON object"),
        ('{"syscalls": []}', "no defaultAction"),
        ('{"defaultAction": "SCMP_ACT_MAYBE"}', "unknown action"),
        ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "SCMP_ACT_NOTIFY is not supported"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}', "flags"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
         "no names"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action":'
         ' "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
         "6 arguments"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action":'
         ' "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}',
         "unsigned integer"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action":'
         ' "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "LIKE"}]}]}',
         "unknown operator"),
        ("[" * 100_000, "not JSON"),
        ('{"defaultAction": ', "not JSON"),
    ],
)  # fmt: skip
def test_bad_profiles_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(seccomp.ProfileError, match=message) as info:
        seccomp.parse_profile(text, "p.json")
    assert info.value.exit_code == 125
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("seccomp profile p.json: ")


def test_compiled_programs_are_cached_by_content(tmp_path: Path) -> None:
    cache = tmp_path / "seccomp"
    first = seccomp.program(seccomp.DEFAULT, capabilities.DEFAULT, cache)
    (entry,) = cache.iterdir()
    assert entry.read_bytes() == first
    # what is in the cache is what a start loads: nothing is compiled again
    entry.write_bytes(b"\0" * 8)
    assert seccomp.program(seccomp.DEFAULT, capabilities.DEFAULT, cache) == b"\0" * 8
    # another capability set is another program
    other = seccomp.program(seccomp.DEFAULT, capabilities.DEFAULT | {"SYS_ADMIN"}, cache)
    assert other != first
    assert len(list(cache.iterdir())) == 2
