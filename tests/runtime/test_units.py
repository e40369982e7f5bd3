"""The runtime's pieces without namespaces or FUSE: parsing, users, paths, state, signals."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import images, mounts, namespaces, network
from runtime.cli import _parse_volume, parse_signal
from runtime.create import CreateRequest, build_init_layer, container_config
from runtime.init import deliver, exit_code
from runtime.process import (
    ExecError,
    check_user,
    merge_env,
    parse_env_assignments,
    read_env_file,
    resolve_user,
)
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


def test_resolve_in_root_keeps_symlinks_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "abs").symlink_to("/real")
    (root / "up").symlink_to("../../../../../etc")
    (root / "loop").symlink_to("loop")
    assert mounts.resolve_in_root(root, "/abs/x") == root / "real/x"
    assert mounts.resolve_in_root(root, "/up/hosts") == root / "etc/hosts"
    assert mounts.resolve_in_root(root, "/../../etc") == root / "etc"
    assert mounts.resolve_in_root(root, "/missing/deeper") == root / "missing/deeper"
    with pytest.raises(OSError, match="symbolic links"):
        mounts.resolve_in_root(root, "/loop/x")


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


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("/tmp:/data", ("/tmp", "/data", False)), ("/tmp:/data/:ro", ("/tmp", "/data", True))],
)
def test_volume_parsing(spec: str, expected: tuple[str, str, bool]) -> None:
    assert _parse_volume(spec) == (os.path.realpath(expected[0]), *expected[1:])


@pytest.mark.parametrize(
    "spec", ["/tmp", "/tmp:data", "tmp:/data", "/tmp:/", "/tmp:/x:rx", "/nonexistent:/x"]
)
def test_bad_volumes(spec: str) -> None:
    with pytest.raises(UsageError):
        _parse_volume(spec)


def test_signal_names() -> None:
    assert parse_signal("TERM") == parse_signal("sigterm") == parse_signal("15") == 15
    for bad in ("NOPE", "0", "999", ""):
        with pytest.raises(UsageError):
            parse_signal(bad)


def test_exit_codes_are_those_a_shell_reports() -> None:
    assert exit_code(0) == 0
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 137


def test_deliver_stands_in_with_sigkill_only_for_unhandled_terminating_signals() -> None:
    plain = subprocess.Popen(["sleep", "30"])
    handler = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
         "print('ready', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert handler.stdout is not None
        assert handler.stdout.readline() == "ready\n"
        assert deliver(plain.pid, signal.SIGTERM, is_namespace_init=True) is True
        assert plain.wait(10) == -signal.SIGKILL
        assert deliver(handler.pid, signal.SIGTERM, is_namespace_init=True) is False
        assert handler.wait(10) == 7
    finally:
        for proc in (plain, handler):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if handler.stdout is not None:
            handler.stdout.close()


def test_network_helpers() -> None:
    net = network.parse_subnet("10.90.0.0/16")
    assert network.gateway(net) == ipaddress.IPv4Address("10.90.0.1")
    assert network.allocate_address(net, []) == "10.90.0.2"
    assert network.allocate_address(net, ["10.90.0.2", "10.90.0.3"]) == "10.90.0.4"
    with pytest.raises(UsageError, match="no free address"):
        network.allocate_address(network.parse_subnet("10.0.0.0/30"), ["10.0.0.2"])
    with pytest.raises(UsageError):
        network.parse_subnet("10.0.0.0/31")
    assert network.hosts_file("box", "10.90.0.2").splitlines()[-1] == "10.90.0.2\tbox"
    assert network.hosts_file("box", None).splitlines()[-1] == "127.0.1.1\tbox"
    assert network.resolv_conf("none") == ""
    assert network.veth_name("a" * 64) == "vs" + "a" * 12


def test_image_lookup(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (tmp_path / "file").write_text("")
    root = tmp_path / "state"
    assert images.lookup_image(str(rootfs), root).layers == (rootfs,)
    with pytest.raises(UsageError, match="no such image: nosuch"):
        images.lookup_image("nosuch", root)
    with pytest.raises(UsageError, match="not a directory"):
        images.lookup_image(str(tmp_path / "file"), root)
    spec = images.ImageSpec("named", (rootfs,), images.ImageConfig(cmd=("/bin/sh",)))
    images.register_resolver(lambda ref, r: spec if (ref, r) == ("named", root) else None)
    try:
        assert images.lookup_image("named", root) is spec
    finally:
        images._resolvers.clear()
    two = images.layers_image([str(rootfs), str(tmp_path)])
    assert two.layers == (rootfs, tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        images.layers_image([str(tmp_path / "nope")])


def test_container_config_from_image_defaults(tmp_path: Path) -> None:
    spec = images.ImageSpec(
        "img",
        (tmp_path,),
        images.ImageConfig(env=("PATH=/bin", "FOO=bar"), entrypoint=("/init",), cmd=("run",),
                           workdir="/app", user="app"),
    )  # fmt: skip
    root = StateRoot(tmp_path / "state")
    cfg = container_config(root, CreateRequest(image=spec, argv=()), "ab" * 32)
    assert cfg.argv == ("/init", "run")
    assert (cfg.workdir, cfg.user, cfg.hostname, cfg.name) == (
        "/app",
        "app",
        "ab" * 6,
        "strata_abababab",
    )
    assert "FOO=bar" in cfg.env
    assert f"HOSTNAME={'ab' * 6}" in cfg.env
    cfg = container_config(root, CreateRequest(image=spec, argv=("x",), entrypoint=()), "cd" * 32)
    assert cfg.argv == ("x",)
    with pytest.raises(UsageError, match="no command"):
        container_config(
            root, CreateRequest(image=images.ImageSpec("e", (tmp_path,)), argv=()), "0" * 64
        )


def test_init_layer_copies_the_images_modes(tmp_path: Path) -> None:
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    os.chmod(image / "etc", 0o750)
    (image / "opt/data").mkdir(parents=True)
    os.chmod(image / "opt", 0o711)
    host_file = tmp_path / "host.conf"
    host_file.write_text("x")
    init = tmp_path / "init"
    build_init_layer(
        init, [image], [Volume(str(tmp_path), "/opt/data"), Volume(str(host_file), "/srv/app.conf")]
    )
    assert os.stat(init / "etc").st_mode & 0o777 == 0o750
    assert os.stat(init / "opt").st_mode & 0o777 == 0o711
    assert (init / "opt/data").is_dir()
    assert (init / "srv/app.conf").is_file()
    for name in ("proc", "sys", "dev"):
        assert (init / name).is_dir()
    for name in ("hostname", "hosts", "resolv.conf"):
        assert (init / "etc" / name).stat().st_size == 0


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


def test_subordinate_ranges(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("other:1:2\nalice:100000:65536\n1001:200000:10\nbroken\n")
    assert namespaces._subordinate_range(str(subuid), "alice", 1000) == (100000, 65536)
    assert namespaces._subordinate_range(str(subuid), "bob", 1001) == (200000, 10)
    assert namespaces._subordinate_range(str(subuid), "carol", 1002) is None
    assert namespaces._subordinate_range(str(tmp_path / "none"), "alice", 1000) is None
    single = namespaces.IdMap((namespaces.IdRange(0, 1000, 1),), (namespaces.IdRange(0, 1000, 1),))
    assert not single.needs_helpers
    assert single.to_json() == {"uids": [[0, 1000, 1]], "gids": [[0, 1000, 1]]}
