"""Shared pytest setup: `--run-slow`, mount fixtures, the test images (extracted once a session).

Markers (declared in pyproject.toml): `fuse` mounts a real FUSE filesystem, `root` needs root,
`slow` is skipped unless `--run-slow` is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.images import (
    BUSYBOX_DOCKER_ARCHIVE,
    BUSYBOX_OCI_ARCHIVE,
    DebianRootfs,
    build_debian_rootfs,
    extract_docker_archive,
    extract_oci_archive,
)
from tests.helpers.mounts import kernel_overlay as kernel_overlay
from tests.helpers.mounts import skip_unless_root
from tests.helpers.mounts import union_mount as union_mount


@pytest.fixture(scope="session", autouse=True)
def _no_registry_configuration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test, and every strata it starts, sees an empty registries.conf and a private
    auth file: a short name never reaches a search registry of this machine's configuration,
    and no test reads or writes real credentials. Registry tests point these at their own."""
    base = tmp_path_factory.mktemp("registry-config")
    conf = base / "registries.conf"
    conf.write_text("unqualified-search-registries = []\n")
    saved = {k: os.environ.get(k) for k in ("CONTAINERS_REGISTRIES_CONF", "REGISTRY_AUTH_FILE")}
    os.environ["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    auth = base / "auth.json"
    auth.write_text('{"auths": {}}\n')  # podman (which reads it too) wants it to exist
    os.environ["REGISTRY_AUTH_FILE"] = str(auth)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def _no_mount_server() -> Iterator[None]:
    """`fuse-strata` mounts by itself in every test (STRATA_MOUNT_SERVER=0), as it does when no
    mount server runs: one path, and no server left behind. tests/unionfs/test_mountd.py and
    the podman test turn the server on and stop it."""
    saved = os.environ.get("STRATA_MOUNT_SERVER")
    os.environ["STRATA_MOUNT_SERVER"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("STRATA_MOUNT_SERVER", None)
        else:
            os.environ["STRATA_MOUNT_SERVER"] = saved


@pytest.fixture(scope="session", autouse=True)
def _prune_networks_at_the_end(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """strata's bridges stay after their containers, as docker0 does; at the end of the session
    `strata network prune` (as root) removes those no container uses, with their nft table and
    the forwarding strata switched on, so that the suite leaves no link or rule of ours."""
    yield
    if os.geteuid() == 0 and os.path.exists("/run/strata"):
        root = tmp_path_factory.mktemp("prune-root")
        strata = os.path.join(os.path.dirname(sys.executable), "strata")
        subprocess.run(
            [strata, "network", "prune", "--root", str(root)], capture_output=True, check=False
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (e.g. building and mounting a Debian rootfs)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test image {path} is missing")
    return path


@pytest.fixture(scope="session")
def busybox_layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The busybox test image's layers from its docker archive, one directory each, base first.

    Shared by the whole session: tests must never write to them (mount them as lowers only).
    """
    dest = tmp_path_factory.mktemp("busybox-docker")
    return extract_docker_archive(_require(BUSYBOX_DOCKER_ARCHIVE), dest)


@pytest.fixture(scope="session")
def busybox_oci_layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The same image's layers from its OCI archive, base first (read-only, as above)."""
    dest = tmp_path_factory.mktemp("busybox-oci")
    return extract_oci_archive(_require(BUSYBOX_OCI_ARCHIVE), dest)


_debian_rootfs_key = pytest.StashKey[DebianRootfs]()


@pytest.fixture(scope="session")
def debian_rootfs(pytestconfig: pytest.Config) -> DebianRootfs:
    """A Debian bookworm minbase rootfs with python3 (mmdebstrap; cached across runs; root)."""
    skip_unless_root()
    rootfs = build_debian_rootfs(suite="bookworm", variant="minbase", include=("python3",))
    pytestconfig.stash[_debian_rootfs_key] = rootfs
    return rootfs


@pytest.fixture(scope="session")
def debian_gcc_rootfs() -> DebianRootfs:
    """A Debian bookworm minbase rootfs with gcc and libc6-dev (mmdebstrap; cached; root): the
    build stage of the multi-stage example."""
    skip_unless_root()
    return build_debian_rootfs(suite="bookworm", variant="minbase", include=("gcc", "libc6-dev"))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    rootfs = config.stash.get(_debian_rootfs_key, None)
    if rootfs is not None:
        how = "built now" if rootfs.built_now else "taken from the cache"
        terminalreporter.write_line(
            f"Debian rootfs {rootfs.path}: {how} (mmdebstrap took {rootfs.build_seconds:.0f}s)"
        )
