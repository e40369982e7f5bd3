"""The busybox test image (../shared/testdata) mounted from its four OCI layers.

strata must show the merged root documented in PROVENANCE.md ("Expected merged root"), show exactly
what kernel overlayfs shows over the same layers, run the image's command under chroot, and with an
upper layer keep every change in the upper while the lowers stay byte-identical.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE, read_docker_archive_config
from tests.helpers.mounts import (
    KernelOverlayFactory,
    StrataMountFactory,
    chroot_run,
    convert_oci_whiteouts,
    copy_tree,
    diff_snapshots,
    is_whiteout_in,
    tree_snapshot,
    without_fields,
)


def top_first(layers_base_first: list[Path]) -> list[Path]:
    return list(reversed(layers_base_first))


def make_upper(tmp_path: Path) -> tuple[Path, Path]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


def assert_expected_merged_root(mnt: Path) -> None:
    """Every fact listed under "Expected merged root" in PROVENANCE.md."""
    etc, opt = mnt / "etc", mnt / "opt"
    assert (etc / "motd").read_bytes() == b"reborn\n"
    assert (etc / "passwd").read_text().rstrip("\n").endswith("appended")

    assert sorted(os.listdir(opt / "tree")) == ["n"]
    assert (opt / "tree" / "n").read_bytes() == b"new\n"
    assert not os.path.lexists(opt / "tree" / "a")
    assert not os.path.lexists(opt / "tree" / "sub")
    assert sorted(os.listdir(opt / "keep")) == ["k2"]
    assert (opt / "keep" / "k2").read_bytes() == b"k2\n"
    assert "added.txt" not in os.listdir(opt)
    with pytest.raises(FileNotFoundError):
        os.lstat(opt / "added.txt")

    h1, h2 = os.lstat(opt / "h1"), os.lstat(opt / "h2")
    assert (opt / "h1").read_bytes() == b"two-layer\n"
    assert h1.st_nlink == 1
    assert (opt / "h2").read_bytes() == b"linked\n"
    assert h1.st_ino != h2.st_ino

    group, group_link = os.lstat(etc / "group"), os.lstat(opt / "group-hardlink")
    assert group.st_ino == group_link.st_ino
    assert group.st_nlink == group_link.st_nlink == 2
    assert (etc / "group").read_bytes() == (opt / "group-hardlink").read_bytes()

    assert os.getxattr(opt / "xattr", "user.pmp", follow_symlinks=False) == b"hello"
    suid = os.lstat(opt / "suid")
    assert stat.S_ISREG(suid.st_mode)
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert stat.S_ISFIFO(os.lstat(opt / "fifo").st_mode)
    assert os.lstat(opt / "sparse").st_size == 1048580
    assert os.readlink(opt / "motd-link") == "../etc/motd"

    wh_names, whiteout_devices = [], []
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if name.startswith(".wh."):
                wh_names.append(path)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                whiteout_devices.append(path)
    assert wh_names == [], "whiteout/opaque marker files are visible"
    assert whiteout_devices == [], "0/0 whiteout devices are visible"


@pytest.mark.fuse
@pytest.mark.parametrize("with_upper", [False, True], ids=["read-only", "with-upper"])
def test_merged_view_is_the_documented_root(
    busybox_layers: list[Path],
    union_mount: StrataMountFactory,
    tmp_path: Path,
    with_upper: bool,
) -> None:
    upper, work = make_upper(tmp_path) if with_upper else (None, None)
    with union_mount(lowers=top_first(busybox_layers), upper=upper, work=work) as m:
        assert_expected_merged_root(m.mnt)
        if not with_upper:
            with pytest.raises(OSError, match="Read-only file system") as excinfo:
                (m.mnt / "etc" / "new-file").write_text("x")
            assert excinfo.value.errno == errno.EROFS
    if upper is not None:
        assert os.listdir(upper) == [], "reading alone must not copy anything up"


def test_docker_and_oci_archives_give_identical_layers(
    busybox_layers: list[Path], busybox_oci_layers: list[Path]
) -> None:
    assert len(busybox_layers) == len(busybox_oci_layers) == 4
    for docker_layer, oci_layer in zip(busybox_layers, busybox_oci_layers, strict=True):
        # Layers 2-4 have no "./" entry, so their root directory's mtime is the extraction time.
        docker = without_fields(tree_snapshot(docker_layer), ["/"], ["mtime_ns"])
        oci = without_fields(tree_snapshot(oci_layer), ["/"], ["mtime_ns"])
        assert not diff_snapshots(docker, oci, names=("docker", "oci")), docker_layer.name


@pytest.mark.fuse
@pytest.mark.root
def test_merged_view_equals_kernel_overlay(
    busybox_layers: list[Path],
    union_mount: StrataMountFactory,
    kernel_overlay: KernelOverlayFactory,
    tmp_path: Path,
) -> None:
    kernel_layers = kernel_copies(busybox_layers, tmp_path / "kernel-layers")

    # Compared: type, permission bits, owner, size of non-directories, data, symlink targets,
    # device numbers, xattrs, mtime, nlink (overlayfs reports 1 for a merged directory, "nlink=1
    # seems to pacify find", and a lower file's raw count, e.g. 2 for /opt/h2 whose other name
    # /opt/h1 is replaced in layer 2: strata must match both), and which names share an inode.
    # Excluded, and why:
    # - atime and ctime: reading updates atime; the kernel's layers are copies with new ctimes.
    # - st_ino/st_dev values: strata numbers inodes itself, overlayfs passes the real inode
    #   through, and the kernel's layers are copies anyway; hard links are compared as groups.
    # - directory sizes: a merged directory reports its topmost real directory's size, which
    #   depends on the whiteout form (`.wh.` files in strata's layers, chardevs or nothing in
    #   the converted copies) and on the filesystem (tmpfs counts entries, ext4 uses blocks).
    snapshot = functools.partial(tree_snapshot, atime=False, ctime=False, ino=False, dir_size=False)
    with kernel_overlay(lowers=top_first(kernel_layers)) as kernel:
        expected = snapshot(kernel.mnt)
    with union_mount(lowers=top_first(busybox_layers)) as m:
        seen = snapshot(m.mnt)
    diff = diff_snapshots(seen, expected, names=("strata", "overlayfs"))
    assert not diff, "strata and kernel overlayfs differ:\n" + "\n".join(diff)


@pytest.mark.fuse
@pytest.mark.root
def test_image_command_runs_in_chroot(
    busybox_layers: list[Path], union_mount: StrataMountFactory
) -> None:
    config = read_docker_archive_config(BUSYBOX_DOCKER_ARCHIVE)
    assert config.env == {"PATH": "/bin", "FOO": "bar"}
    assert config.cmd == ["/bin/sh", "-c", "echo FOO=$FOO; cat /etc/motd; ls -A /opt/tree"]
    with union_mount(lowers=top_first(busybox_layers)) as m:
        result = chroot_run(m.mnt, config.cmd, env=config.env)
        explicit = chroot_run(
            m.mnt, ["/bin/sh", "-c", "echo FOO=bar; cat /etc/motd; ls -A /opt/tree"], env=config.env
        )
    assert result.stdout == "FOO=bar\nreborn\nn\n"
    assert explicit.stdout == result.stdout
    assert result.stderr == ""


@pytest.mark.fuse
def test_changes_go_to_the_upper_and_lowers_stay_unchanged(
    busybox_layers: list[Path], union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    upper, work = make_upper(tmp_path)
    lowers = top_first(busybox_layers)
    # Everything but atime, which reads through the mount may update.
    before = [tree_snapshot(layer, ctime=True, ino=True) for layer in lowers]
    original_passwd = (busybox_layers[1] / "etc" / "passwd").read_bytes()

    with union_mount(lowers=lowers, upper=upper, work=work) as m:
        (m.mnt / "opt" / "written.txt").write_bytes(b"written\n")
        with (m.mnt / "etc" / "passwd").open("ab") as f:
            f.write(b"more\n")
        (m.mnt / "etc" / "motd").unlink()

        assert (m.mnt / "opt" / "written.txt").read_bytes() == b"written\n"
        assert (m.mnt / "etc" / "passwd").read_bytes() == original_passwd + b"more\n"
        assert not os.path.lexists(m.mnt / "etc" / "motd")
        assert "motd" not in os.listdir(m.mnt / "etc")
        assert os.readlink(m.mnt / "opt" / "motd-link") == "../etc/motd"  # now dangling

    after = [tree_snapshot(layer, ctime=True, ino=True) for layer in lowers]
    for layer, old, new in zip(lowers, before, after, strict=True):
        diff = diff_snapshots(old, new, names=("before", "after"))
        assert not diff, f"lower layer {layer} changed:\n" + "\n".join(diff)

    assert (upper / "opt" / "written.txt").read_bytes() == b"written\n"
    assert (upper / "etc" / "passwd").read_bytes() == original_passwd + b"more\n"
    assert is_whiteout_in(upper / "etc", "motd"), sorted(os.listdir(upper / "etc"))

    # The changes persist when the same upper is mounted again.
    with union_mount(lowers=lowers, upper=upper, work=work) as m:
        assert (m.mnt / "opt" / "written.txt").read_bytes() == b"written\n"
        assert (m.mnt / "etc" / "passwd").read_bytes() == original_passwd + b"more\n"
        assert not os.path.lexists(m.mnt / "etc" / "motd")
        assert (m.mnt / "opt" / "keep" / "k2").read_bytes() == b"k2\n"


@pytest.mark.fuse
@pytest.mark.root
def test_metacopy_binaries_run_and_survive_remount_and_stacking(
    busybox_layers: list[Path], union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    """chmod/chown of lower files (the shell itself) copy metadata only; exec, reads, a
    re-mount and the upper stacked as a lower of a new union all still see the data."""
    upper, work = make_upper(tmp_path)
    lowers = top_first(busybox_layers)
    busybox = next(
        layer / "bin" / "busybox" for layer in lowers if (layer / "bin" / "busybox").exists()
    )
    size = os.stat(busybox).st_size
    original_passwd = (busybox_layers[1] / "etc" / "passwd").read_bytes()
    script = "chmod 4755 /bin/busybox; chown 1:1 /etc/passwd; cat /etc/passwd; echo ran"
    with union_mount(lowers=lowers, upper=upper, work=work) as m:
        result = chroot_run(m.mnt, ["/bin/sh", "-c", script])
        assert result.stdout == original_passwd.decode() + "ran\n"
        assert chroot_run(m.mnt, ["/bin/busybox", "echo", "again"]).stdout == "again\n"
    for rel in ("bin/busybox", "etc/passwd"):
        assert os.getxattr(upper / rel, "trusted.strata.metacopy") == rel.encode()
    st = os.stat(upper / "bin" / "busybox")
    assert (st.st_size, stat.S_IMODE(st.st_mode)) == (size, 0o4755)
    assert st.st_blocks * 512 < size  # a hole: the data stayed below
    upper2, work2 = tmp_path / "upper2", tmp_path / "work2"
    upper2.mkdir()
    work2.mkdir()
    with union_mount(lowers=[upper, *lowers], upper=upper2, work=work2) as m:
        assert chroot_run(m.mnt, ["/bin/busybox", "echo", "stacked"]).stdout == "stacked\n"
        with (m.mnt / "etc" / "passwd").open("ab") as f:
            f.write(b"more\n")
        assert (m.mnt / "etc" / "passwd").read_bytes() == original_passwd + b"more\n"
        assert os.stat(m.mnt / "etc" / "passwd").st_uid == 1
    assert (upper2 / "etc" / "passwd").read_bytes() == original_passwd + b"more\n"


def kernel_copies(layers: list[Path], dest: Path) -> list[Path]:
    """Copies of `layers` with their OCI whiteouts converted for kernel overlayfs (same order)."""
    dest.mkdir()
    copies = []
    for layer in layers:
        copy = dest / layer.name
        copy_tree(layer, copy)
        convert_oci_whiteouts(copy)
        copies.append(copy)
    return copies


@pytest.mark.root
def test_kernel_overlay_shows_the_documented_root(
    busybox_layers: list[Path], kernel_overlay: KernelOverlayFactory, tmp_path: Path
) -> None:
    """The oracle itself: converted layers under kernel overlayfs give PROVENANCE.md's root."""
    copies = kernel_copies(busybox_layers, tmp_path / "kernel-layers")
    with kernel_overlay(lowers=top_first(copies)) as kernel:
        assert_expected_merged_root(kernel.mnt)
