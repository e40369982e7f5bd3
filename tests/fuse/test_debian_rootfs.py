"""A Debian bookworm rootfs (mmdebstrap minbase + python3) as the lower layer of a chroot.

Real programs (dpkg, apt, python3, coreutils) run in `chroot MNT`, write and delete under /etc,
remove a big lower directory and rename lower directories; afterwards the lower is unchanged, the
upper holds the changes (with whiteouts), and a second mount of the same upper shows them again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.images import DebianRootfs
from tests.helpers.mounts import (
    EntrySnapshot,
    StrataMountFactory,
    chroot_run,
    diff_snapshots,
    is_whiteout_in,
    tree_snapshot,
)

pytestmark = [pytest.mark.fuse, pytest.mark.slow, pytest.mark.root]

# FUSE mounts are nodev by default, and then even /dev/null in the rootfs cannot be opened
# (EACCES). A chroot needs the rootfs's device nodes, as a container engine would pass `dev`.
MOUNT_ARGS = ["-o", "dev"]

PROBE_CONTROL = """\
Package: strata-probe
Version: 1.0
Architecture: all
Maintainer: strata tests <tests@example.invalid>
Description: a package installed by the strata tests
"""


def sh(mnt: Path, script: str) -> str:
    return chroot_run(mnt, ["/bin/sh", "-ec", script]).stdout


def cheap_snapshot(root: Path) -> dict[str, EntrySnapshot]:
    """Paths, types, modes, owners, sizes, inode numbers, mtimes and ctimes (no data, no xattrs):
    cheap, and any write, chmod, rename or replacement changes one of them."""
    return tree_snapshot(root, content=False, xattrs=False, ctime=True, ino=True)


def test_debian_rootfs_works_as_a_lower_layer(
    debian_rootfs: DebianRootfs, union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    lower = debian_rootfs.path
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    lower_before = cheap_snapshot(lower)
    issue = (lower / "etc" / "issue").read_text()
    assert (lower / "etc" / "motd").exists()
    assert (lower / "usr" / "share" / "doc").is_dir()

    with union_mount(lowers=[lower], upper=upper, work=work, extra_args=MOUNT_ARGS) as m:
        mnt = m.mnt
        packages = chroot_run(mnt, ["dpkg", "-l"]).stdout
        assert any(line.split()[:2] == ["ii", "python3"] for line in packages.splitlines())
        assert chroot_run(mnt, ["python3", "-c", "import json,sqlite3; print(1+1)"]).stdout == "2\n"
        assert chroot_run(mnt, ["apt-get", "--version"]).stdout.startswith("apt ")

        sh(mnt, "echo strata > /etc/strata-test")
        sh(mnt, "echo appended-by-strata >> /etc/issue")
        sh(mnt, "rm /etc/motd")
        sh(mnt, "mkdir -p /var/tmp/x && rm -rf /usr/share/doc")

        # Renames of lower directories (dpkg and apt rely on them; EXDEV would break them).
        apt_before = tree_snapshot(mnt / "etc" / "apt", ino=True)
        sh(mnt, "mv /etc/apt /etc/apt2 && test ! -e /etc/apt && test -d /etc/apt2/apt.conf.d")
        sh(mnt, "mv /etc/apt2 /etc/apt")
        apt_after = tree_snapshot(mnt / "etc" / "apt", ino=True)
        diff = diff_snapshots(apt_before, apt_after, names=("before", "after"))
        assert not diff, "/etc/apt changed by a rename round trip:\n" + "\n".join(diff)

        # A dpkg install: rename-heavy updates of /var/lib/dpkg and `.dpkg-new` files.
        sh(
            mnt,
            "mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/strata-probe\n"
            f"cat > /tmp/pkg/DEBIAN/control <<'EOF'\n{PROBE_CONTROL}EOF\n"
            "echo probe > /tmp/pkg/usr/share/strata-probe/probe\n"
            "dpkg-deb --root-owner-group --build /tmp/pkg /tmp/strata-probe.deb >/dev/null\n"
            "dpkg -i /tmp/strata-probe.deb >/dev/null\n",
        )
        assert "Status: install ok installed" in sh(mnt, "dpkg -s strata-probe")

        # Metadata-only copy-up of the interpreter (several MB): it still runs.
        python = os.path.realpath(mnt / "usr" / "bin" / "python3").removeprefix(str(mnt))
        sh(mnt, f"chmod 0711 {python} && chown 0:1 {python}")  # touch opens for writing
        assert chroot_run(mnt, ["python3", "-c", "print('metacopy')"]).stdout == "metacopy\n"

        assert (mnt / "etc" / "strata-test").read_text() == "strata\n"
        assert (mnt / "etc" / "issue").read_text() == issue + "appended-by-strata\n"
        assert not os.path.lexists(mnt / "etc" / "motd")
        assert not os.path.lexists(mnt / "usr" / "share" / "doc")
        assert "doc" not in os.listdir(mnt / "usr" / "share")
        assert (mnt / "var" / "tmp" / "x").is_dir()

    up_python = upper / python.lstrip("/")
    assert os.getxattr(up_python, "trusted.strata.metacopy") == python.lstrip("/").encode()
    assert os.stat(up_python).st_blocks * 512 < os.stat(up_python).st_size  # data left below

    lower_after = cheap_snapshot(lower)
    diff = diff_snapshots(lower_before, lower_after, names=("before", "after"))
    assert not diff, "the lower layer changed:\n" + "\n".join(diff)

    assert (upper / "etc" / "strata-test").read_text() == "strata\n"
    assert (upper / "etc" / "issue").read_text() == issue + "appended-by-strata\n"
    assert is_whiteout_in(upper / "etc", "motd")
    assert is_whiteout_in(upper / "usr" / "share", "doc")
    assert (upper / "var" / "tmp" / "x").is_dir()
    assert (upper / "usr" / "share" / "strata-probe" / "probe").read_text() == "probe\n"

    with union_mount(lowers=[lower], upper=upper, work=work, extra_args=MOUNT_ARGS) as m:
        mnt = m.mnt
        assert (mnt / "etc" / "strata-test").read_text() == "strata\n"
        assert (mnt / "etc" / "issue").read_text() == issue + "appended-by-strata\n"
        assert not os.path.lexists(mnt / "etc" / "motd")
        assert not os.path.lexists(mnt / "usr" / "share" / "doc")
        assert (mnt / "var" / "tmp" / "x").is_dir()
        assert (mnt / "etc" / "apt" / "apt.conf.d").is_dir()
        assert "Status: install ok installed" in sh(mnt, "dpkg -s strata-probe")
        assert chroot_run(mnt, ["python3", "-c", "print('still works')"]).stdout == "still works\n"
