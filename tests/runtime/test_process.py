"""runtime.process: user specs, the container's passwd/group lookups, environment merging."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.process import (
    ExecError,
    check_user,
    merge_env,
    parse_env_assignments,
    read_env_file,
    resolve_user,
)
from unionfs.errors import UsageError


@pytest.mark.parametrize("spec", ["", "0", "root", "1000:1000", "nobody:nogroup", "www-data"])
def test_good_user_specs(spec: str) -> None:
    check_user(spec)


@pytest.mark.parametrize("spec", [":", ":0", "a:b:c", "a b", "-1", "1:", "4294967295"])
def test_bad_user_specs(spec: str) -> None:
    with pytest.raises(UsageError):
        check_user(spec)


def test_resolve_user_reads_the_containers_files(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:100:A:/home/alice:/bin/sh\nbad line\n"
    )
    (tmp_path / "group").write_text("root:x:0:\nusers:x:100:\nwheel:x:10:alice,bob\n")
    etc = str(tmp_path)
    assert resolve_user("", etc=etc) == resolve_user("0", etc=etc)
    root = resolve_user("root", etc=etc)
    assert (root.uid, root.gid, root.groups, root.home) == (0, 0, (0,), "/root")
    alice = resolve_user("alice", etc=etc)
    assert (alice.uid, alice.gid, alice.groups, alice.home) == (1000, 100, (100, 10), "/home/alice")
    assert resolve_user("1000", etc=etc).home == "/home/alice"
    unknown = resolve_user("4242:4343", etc=etc)
    assert (unknown.uid, unknown.gid, unknown.groups, unknown.home) == (4242, 4343, (4343,), "/")
    assert resolve_user("alice:wheel", etc=etc).gid == 10
    with pytest.raises(ExecError, match="unable to find user bob"):
        resolve_user("bob", etc=etc)
    with pytest.raises(ExecError, match="unable to find group staff"):
        resolve_user("alice:staff", etc=etc)


def test_environment_merging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("NOT_SET", raising=False)
    assert parse_env_assignments(["A=1", "FROM_HOST", "NOT_SET", "E="], source="-e") == [
        "A=1",
        "FROM_HOST=h",
        "E=",
    ]
    with pytest.raises(UsageError):
        parse_env_assignments(["=x"], source="-e")
    env_file = tmp_path / "env"
    env_file.write_text("# c\n\nX=1\nY = 2\n")
    assert read_env_file(str(env_file)) == ["X=1", "Y = 2"]
    merged = merge_env(["PATH=/bin", "A=image"], ["A=flag", "B=2"])
    assert merged == ("PATH=/bin", "A=flag", "B=2")
    assert merge_env([])[0].startswith("PATH=/usr/local/sbin")
