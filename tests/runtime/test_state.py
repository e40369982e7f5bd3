"""runtime.state: the state files, lookups, and process identity across pid reuse."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runtime.state import (
    ContainerConfig,
    ContainerState,
    StateRoot,
    Volume,
    process_alive,
    process_start_time,
    write_json,
)
from unionfs.errors import UsageError


def test_state_files_round_trip_and_lookups(tmp_path: Path) -> None:
    root = StateRoot(tmp_path / "state")
    root.ensure()
    configs = []
    for i, name in enumerate(["one", "two"]):
        cid = f"{i:x}" * 64
        cfg = ContainerConfig(
            id=cid, name=name, created=f"2024-01-0{i + 1}T00:00:00.0Z", image="img",
            layers=("/l",), argv=("sh",), env=("A=1",), workdir="/", user="", hostname="h",
            network="host", volumes=(Volume("/a", "/b", True),),
        )  # fmt: skip
        staging = root.staging_dir(cid)
        staging.mkdir()
        configs.append(root.commit(staging, cfg))
    assert [c.name for c in root.containers()] == ["one", "two"]
    assert root.find("two").config == configs[1].config
    assert root.find("1" * 5).name == "two"
    with pytest.raises(UsageError, match="no such container"):
        root.find("zzz")
    with pytest.raises(UsageError, match="already in use"):
        root.check_name("one")
    with pytest.raises(UsageError, match="invalid container name"):
        root.check_name("-bad")
    one = configs[0]
    state = ContainerState(status="running", monitor_pid=os.getpid(),
                           monitor_start=process_start_time(os.getpid()) or 0)  # fmt: skip
    one.write_state(state)
    assert one.read_state() == state
    assert one.effective_state().status == "running"
    one.write_state(state.replace(monitor_start=1))  # a reused pid: not our monitor
    assert one.effective_state().status == "exited"
    write_json(one.path / "config.json", {**one.config.to_json(), "future_field": 1})
    assert root.find("one").config == one.config


def test_process_identity_survives_pid_reuse_checks() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start_time(proc.pid)
        assert start is not None
        assert process_alive(proc.pid, start)
        assert not process_alive(proc.pid, start + 1)
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid, start)


@pytest.mark.root
def test_remove_tree_refuses_a_tree_with_a_mount_below_it(tmp_path: Path) -> None:
    """A container dir with something still mounted inside is left whole (rm -rf would descend
    into the mount); the mount point itself may be what is being removed."""
    from runtime.state import remove_tree
    from tests.helpers.mounts import skip_unless_root
    from unionfs import libc

    skip_unless_root()
    tree = tmp_path / "container"
    (tree / "rootfs").mkdir(parents=True)
    (tree / "keep").write_text("data")
    libc.mount("tmpfs", tree / "rootfs", "tmpfs")
    try:
        with pytest.raises(UsageError, match=r"rootfs is still mounted; not removing"):
            remove_tree(tree)
        assert (tree / "keep").read_text() == "data"
    finally:
        libc.umount2(tree / "rootfs")
    remove_tree(tree)
    assert not tree.exists()
