"""`strata commit`: the upper dir as an OCI changeset layer (whiteouts, opaque markers, no private
xattrs), the committed image runs with exactly the container's changes, and `save` round-trips."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from images.commit import write_changeset
from images.load import load
from images.save import save
from images.store import ImageStore
from images.tarsplit import rebuild
from runtime.namespaces import IdMap, IdRange
from tests.runtime.conftest import Strata, container_processes, wait_for, wait_running

from .test_load import IMAGE_ID, _archive


def _members(store: ImageStore, diff_id: str) -> list[tarfile.TarInfo]:
    data = b"".join(rebuild(store.map_path(diff_id), store.layer_path(diff_id)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def _setxattr_or_skip(path: Path, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e.strerror}")


def test_changeset_without_root(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d/sub").mkdir(parents=True)
    (upper / "d/.wh.gone").write_bytes(b"")
    (upper / "d/b").write_text("b\n")
    os.link(upper / "d/b", upper / "d/a-link")
    (upper / "d/sub/x").write_text("x\n")
    os.symlink("../b", upper / "d/sub/ln")
    os.mkfifo(upper / "d/fifo")
    _setxattr_or_skip(upper / "d/sub", "user.overlay.opaque", b"y")
    _setxattr_or_skip(upper / "d/b", "user.strata.origin", b"private")
    _setxattr_or_skip(upper / "d/b", "user.mine", b"kept")
    out, again = tmp_path / "one.tar", tmp_path / "two.tar"
    write_changeset(upper, out, (), None)
    write_changeset(upper, again, (), None)
    assert out.read_bytes() == again.read_bytes()  # deterministic
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
    assert names == [
        "d",
        "d/.wh.gone",
        "d/a-link",
        "d/b",
        "d/fifo",
        "d/sub",
        "d/sub/.wh..wh..opq",
        "d/sub/ln",
        "d/sub/x",
    ]
    # the first name of a hard-linked pair holds the data, the second links to it
    assert members["d/a-link"].isreg()
    assert members["d/a-link"].size == 2
    assert members["d/b"].islnk()
    assert members["d/b"].linkname == "d/a-link"
    assert members["d/sub/ln"].issym()
    assert members["d/sub/ln"].linkname == "../b"
    assert members["d/fifo"].isfifo()
    assert members["d/.wh.gone"].isreg()
    assert members["d/.wh.gone"].size == 0
    headers = {k for m in members.values() for k in m.pax_headers}
    assert "SCHILY.xattr.user.mine" in headers
    assert not [h for h in headers if "strata" in h or "overlay" in h]


SCRIPT = r"""
set -e
echo new > /opt/newfile
ln /opt/newfile /opt/newlink
rm /etc/motd
rm -rf /opt/keep
mkdir /opt/keep
echo fresh > /opt/keep/fresh
echo more >> /etc/passwd
"""

CHECK = r"""
test -e /etc/motd || echo motd-gone
ls -A /opt/keep; cat /opt/keep/fresh /opt/newfile; tail -n2 /etc/passwd
test "$(stat -c %i /opt/newfile)" = "$(stat -c %i /opt/newlink)" && echo linked
ls -A /opt/tree; find / -xdev -name '.wh.*' | head -n1
echo end
"""


def test_commit_runs_and_round_trips(strata: Strata) -> None:
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    strata.run("run", "--name", "c1", "uniontest:1", "sh", "-c", SCRIPT, check=True)
    done = strata.run("commit", "c1", "committed:1", "-m", "changes", check=True)
    store = ImageStore(strata.root)
    rec = store.get("committed:1")
    assert done.stdout == f"sha256:{rec.id}\n"
    base = store.get("uniontest:1")
    assert base.id == IMAGE_ID
    assert rec.layers[:-1] == base.layers
    assert len(rec.layers) == len(base.layers) + 1
    diff_ids = rec.config["rootfs"]["diff_ids"]  # type: ignore[index]
    assert diff_ids == [f"sha256:{d}" for d in rec.layers]
    history = rec.config["history"]
    assert isinstance(history, list)
    assert history[-1]["created_by"] == "strata commit c1"
    assert history[-1]["comment"] == "changes"
    assert rec.runtime_config == base.runtime_config
    # the layer tar: whiteout, opaque marker, changed files, no private or overlay xattrs
    members = _members(store, rec.layers[-1])
    by_name = {m.name: m for m in members}
    for name in ("etc/.wh.motd", "opt/keep/.wh..wh..opq", "opt/keep/fresh", "etc/passwd"):
        assert name in by_name, name
    assert by_name["opt/keep"].isdir()
    assert by_name["opt/newlink"].islnk()
    assert by_name["opt/newlink"].linkname == "opt/newfile"
    assert not [k for m in members for k in m.pax_headers if "strata" in k or "overlay" in k]
    assert not [m.name for m in members if m.ischr() and m.devmajor == m.devminor == 0]
    names = [m.name for m in members]
    assert "opt/tree" not in names
    assert not any(n.startswith("opt/tree/") for n in names)
    # the committed layer is extracted into the store like a loaded one
    layer = store.layer_path(rec.layers[-1])
    assert (layer / "etc/.wh.motd").is_file()
    assert (layer / "opt/keep/.wh..wh..opq").is_file()
    assert stat.S_ISREG(os.lstat(layer / "opt/newfile").st_mode)
    # running it shows exactly the changes
    run = strata.run("run", "--rm", "committed:1", "sh", "-c", CHECK, check=True)
    assert run.stdout.splitlines() == [
        "motd-gone",
        "fresh",
        "fresh",
        "new",
        "appended",
        "more",
        "linked",
        "n",
        "end",
    ]
    # save -> load gives the same digests
    out = strata.tmp / "committed.tar"
    save(store, "committed:1", out, "oci-archive")
    again = ImageStore(strata.tmp / "again")
    (reloaded,) = load(again, out, say=lambda _: None)
    assert (reloaded.id, reloaded.layers) == (rec.id, rec.layers)
    strata.run("rm", "c1", check=True)


def test_commit_of_metadata_only_copy_ups_stores_the_data(strata: Strata) -> None:
    """chmod/chown/touch of a lower file copies only metadata up (metacopy): the upper file is a
    hole with a marker, and the committed layer must still carry the data, read from below."""
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    script = "chmod 0600 /etc/passwd && chown 7:8 /bin/busybox && sed -n 1p /etc/passwd"
    first = strata.run("run", "--name", "mc", "uniontest:1", "sh", "-c", script, check=True)
    store = ImageStore(strata.root)
    base_layers = [store.layer_path(d) for d in reversed(store.get("uniontest:1").layers)]
    upper = strata.root / "containers"
    (cdir,) = [p for p in upper.iterdir() if (p / "upper/etc/passwd").exists()]
    marked = os.listxattr(cdir / "upper/etc/passwd", follow_symlinks=False)
    assert [a for a in marked if a.endswith("strata.metacopy")], marked  # really metadata-only
    strata.run("commit", "mc", "mc:1", check=True)
    members = {m.name: m for m in _members(store, store.get("mc:1").layers[-1])}
    want = {}
    for rel in ("etc/passwd", "bin/busybox"):
        src = next(layer / rel for layer in base_layers if (layer / rel).exists())
        want[rel] = src.read_bytes()
        assert members[rel].size == len(want[rel]) > 0
    assert stat.S_IMODE(members["etc/passwd"].mode) == 0o600
    assert (members["bin/busybox"].uid, members["bin/busybox"].gid) == (7, 8)
    layer = store.layer_path(store.get("mc:1").layers[-1])
    assert {rel: (layer / rel).read_bytes() for rel in want} == want
    again = strata.run("run", "--rm", "mc:1", "sed", "-n", "1p", "/etc/passwd", check=True)
    assert again.stdout == first.stdout
    strata.run("rm", "mc", check=True)


def test_commit_refusals(strata: Strata) -> None:
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    missing = strata.run("commit", "nosuch", "x:1")
    assert missing.returncode != 0
    assert "no such container" in missing.stderr
    strata.run("create", "--name", "ro", "--read-only", "uniontest:1", check=True)
    ro = strata.run("commit", "ro")
    assert ro.returncode != 0
    assert "no writable layer" in ro.stderr
    strata.run("rm", "ro", check=True)
    assert strata.run("images", "-q", check=True).stdout.split() == [IMAGE_ID[:12]]


def _states(init_pid: int) -> dict[int, str]:
    """pid -> state letter of every process in the PID namespace of `init_pid`."""
    return {pid: p.state for pid, p in container_processes(init_pid).items()}


def test_commit_of_a_running_container_pauses_and_resumes_it(strata: Strata) -> None:
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    # The background sleep is always there: between two short sleeps the shell can be alone.
    script = (
        "echo before > /before; sleep 600 & while true; do echo tick >> /ticks; sleep 0.05; done"
    )
    strata.run("run", "-d", "--name", "busy", "uniontest:1", "sh", "-c", script, check=True)
    wait_running(strata, "busy")
    # A tick written: the shell has forked its background sleep (the test wants two processes).
    ticks = strata.container_dir("busy") / "upper" / "ticks"
    wait_for(ticks.exists, "the container's first tick")
    init_pid = int(strata.inspect("busy")["State"]["Pid"])  # type: ignore[index]
    from runtime.pause import is_frozen, paused

    cid = strata.container_dir("busy").name
    with paused(init_pid, cid) as how:
        # as root the monitor gives every container a cgroup to freeze (runtime.cgroups)
        assert how == "cgroup"
        assert is_frozen(init_pid, cid)
        states = _states(init_pid)
        assert len(states) >= 2  # the shell, its background sleep and maybe a short one
        assert "R" not in states.values()
    assert not is_frozen(init_pid, cid)  # resumed
    assert "T" not in _states(init_pid).values()
    strata.run("commit", "busy", "busy:1", check=True)
    assert "T" not in _states(init_pid).values()
    store = ImageStore(strata.root)
    names = {m.name for m in _members(store, store.get("busy:1").layers[-1])}
    assert {"before", "ticks"} <= names
    assert strata.inspect("busy")["State"]["Status"] == "running"  # type: ignore[index]
    strata.run("rm", "-f", "busy", check=True)


def test_pause_resumes_when_the_body_fails(strata: Strata) -> None:
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    strata.run("run", "-d", "--name", "busy", "uniontest:1", "sleep", "60", check=True)
    wait_running(strata, "busy")
    init_pid = int(strata.inspect("busy")["State"]["Pid"])  # type: ignore[index]
    from runtime.pause import is_frozen, paused

    cid = strata.container_dir("busy").name
    seen: list[bool] = []

    def fail_while_paused() -> None:
        with paused(init_pid, cid):
            seen.append(is_frozen(init_pid, cid))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_while_paused()
    assert seen == [True]
    assert not is_frozen(init_pid, cid)
    assert _states(init_pid)[init_pid] != "T"
    strata.run("rm", "-f", "busy", check=True)


def test_changeset_owners_through_a_user_namespace_map(tmp_path: Path) -> None:
    """Host owners become the container's: the user is root, subordinate ids count from 1,
    anything unmapped is nobody (65534), as the container itself saw them."""
    upper = tmp_path / "upper"
    upper.mkdir()
    for name, owner in (("root", 1001), ("sub", 100004), ("stranger", 999)):
        (upper / name).write_text(name)
        try:
            os.chown(upper / name, owner, owner)
        except PermissionError:
            pytest.skip("needs root to give files other owners")
    out = tmp_path / "layer.tar"
    id_map = IdMap(
        uids=(IdRange(0, 1001, 1), IdRange(1, 100000, 65536)), gids=(IdRange(0, 1001, 1),)
    )
    write_changeset(upper, out, (), id_map)
    with tarfile.open(out) as tar:
        owners = {m.name: (m.uid, m.gid) for m in tar.getmembers()}
    assert owners == {"root": (0, 0), "stranger": (65534, 65534), "sub": (5, 65534)}
