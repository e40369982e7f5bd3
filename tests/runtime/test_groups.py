"""docker's command groups (`strata container ls`, `strata image rm`, `strata system df`, ...)
run the same commands as their flat names; `system df` and `system prune` as docker's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import STRATA, Strata, wait_running


def test_group_members_run_the_flat_commands(strata: Strata, busybox: list[str]) -> None:
    done = strata.run("container", "run", "--name", "g1", *busybox, "/bin/echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    listed = strata.run("container", "ls", "-a", "--format", "json", check=True).stdout
    assert [row["Names"] for row in json.loads(listed)] == [["g1"]]
    assert strata.run("container", "ls", "-a", "-q").stdout == strata.run("ps", "-a", "-q").stdout
    info = json.loads(strata.run("container", "inspect", "g1", check=True).stdout)
    assert info[0]["Name"] == "g1"
    assert strata.run("container", "rm", "g1", check=True).stdout == "g1\n"
    assert strata.run("image", "ls", check=True).stdout == strata.run("images").stdout
    bad = strata.run("container", "nosuch")
    assert (bad.returncode, len(bad.stderr.splitlines())) == (125, 1)
    missing = strata.run("container", "rm", "nothere")
    assert (missing.returncode, missing.stderr) == (1, "strata: no such container: nothere\n")


@pytest.mark.parametrize(
    ("group", "members"),
    [
        ("container", {"ls", "run", "create", "start", "stop", "kill", "rm", "exec", "logs",
                       "inspect", "port", "commit", "prune"}),
        ("image", {"ls", "rm", "inspect", "history", "tag", "prune", "load", "import", "save",
                   "build", "pull", "push"}),
        ("system", {"df", "prune"}),
        ("volume", {"create", "ls", "inspect", "rm", "prune"}),
        ("network", {"create", "ls", "inspect", "rm", "prune"}),
    ],
)  # fmt: skip
def test_groups_list_their_members(group: str, members: set[str]) -> None:
    done = subprocess.run([STRATA, group, "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for member in members:
        assert f"    {member} " in done.stdout or f"    {member}\n" in done.stdout, member


def test_system_df_and_prune(strata: Strata, busybox: list[str], tmp_path: Path) -> None:
    from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE

    if not BUSYBOX_DOCKER_ARCHIVE.exists():
        pytest.skip(f"{BUSYBOX_DOCKER_ARCHIVE} missing")
    empty = strata.run("system", "df", check=True).stdout.splitlines()
    assert [line.split()[0] for line in empty] == ["TYPE", "Images", "Containers", "Local", "Build"]
    assert empty[1].split()[1:] == ["0", "0", "0B", "0B", "(0%)"]
    strata.run("load", "-i", str(BUSYBOX_DOCKER_ARCHIVE), check=True)
    (image,) = json.loads(strata.run("images", "--format", "json", check=True).stdout)
    tag = image["RepoTags"][0]
    strata.run("run", "--name", "stopped", "-v", "/anon", tag, "/bin/sh", "-c",
               "head -c 100000 /dev/zero > /big", check=True)  # fmt: skip
    strata.run("run", "-d", "--name", "up", tag, "/bin/sleep", "60", check=True)
    wait_running(strata, "up")
    strata.run("volume", "create", "named", check=True)
    rows = {
        line.split()[0]: line.split() for line in strata.run("system", "df").stdout.splitlines()
    }
    assert rows["Images"][1:3] == ["1", "1"]
    assert rows["Containers"][1:3] == ["2", "1"]
    assert rows["Local"][2:4] == ["2", "1"]  # Local Volumes: named unused, /anon in use
    # the stopped container's 100 kB are reclaimable, the running one's nothing
    assert rows["Containers"][4].endswith("kB")
    pruned = strata.run("system", "prune", "-f", "--volumes", check=True).stdout
    stopped = strata.inspect("up")  # still there
    assert stopped["Name"] == "up"
    assert "Deleted Containers:\n" in pruned
    assert "Deleted Volumes:\n" in pruned  # the stopped container's anonymous volume
    assert pruned.splitlines()[-1].startswith("Total reclaimed space: ")
    assert strata.run("ps", "-a", "-q").stdout.split() == [str(stopped["Id"])[:12]]
    assert strata.run("volume", "ls", "-q").stdout.split() == ["named"]  # named stay
    assert strata.run("images", "-q").stdout.strip() != ""  # tagged and in use: kept
    strata.run("rm", "-f", "up", check=True)
    pruned = strata.run("system", "prune", "-a", "-f", check=True).stdout
    assert "Deleted Images:\nuntagged: " in pruned
    assert strata.run("images", "-q").stdout == ""
    assert (
        strata.run("container", "prune", "-f", check=True).stdout == "Total reclaimed space: 0B\n"
    )
