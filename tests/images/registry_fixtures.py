"""Fixtures and checks shared by the registry tests (test_registry*.py import them by name).

- `client`: `strata` against a private state root without needing root (pull, push, login only;
  tests that run containers use the runtime's `strata` fixture and `configure()` it).
- `registry`: a plain HTTP registry on 127.0.0.1 holding the busybox test image as
  `uniontest:1` (copied in by skopeo); `proxy`: a `FaultProxy` in front of it.
- `configure()` points a `Strata` at a registries.conf and an auth file of the test's own, so no
  test ever reads the machine's /etc/containers/registries.conf or /run/containers/0/auth.json.
- `StoreState` / `assert_failed_cleanly()`: a failed pull exits 125 with one line and leaves the
  store as it was (no new image, no new layer, nothing in images/tmp).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from images.store import ImageStore
from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.helpers.registry import FaultProxy, RegistryServer, seed
from tests.runtime.conftest import STRATA, Strata

IMAGE_ID: Final = "3d1c289ad1a5d8c3658fb1563c193b1ab0cb6c81c146fbce02e24a1c80993931"
EXPECTED_RUN: Final = ["FOO=bar", "reborn", "n"]  # PROVENANCE.md: what the image prints
REPO: Final = "uniontest"


def configure(strata: Strata, tmp: Path, *, search: Sequence[str] = ()) -> Path:
    """Give `strata` its own registries.conf (with these search registries) and auth file.

    Returns the auth file's path (it does not exist until a login writes it)."""
    conf = tmp / "registries.conf"
    listed = ", ".join(f'"{s}"' for s in search)
    conf.write_text(f"unqualified-search-registries = [{listed}]\n")
    authfile = tmp / "auth.json"
    strata.env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    strata.env["REGISTRY_AUTH_FILE"] = str(authfile)
    return authfile


@pytest.fixture
def client(tmp_path: Path) -> Strata:
    """`strata` with a private root and registry config; no root needed (no containers)."""
    handle = Strata(root=tmp_path / "state", tmp=tmp_path)
    configure(handle, tmp_path)
    return handle


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A plain registry holding the busybox test image as uniontest:1."""
    with RegistryServer(tmp_path / "registry") as reg:
        seed(reg, BUSYBOX_OCI_ARCHIVE, f"{REPO}:1")
        yield reg


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry) as p:
        yield p


def run_rootless_command(
    strata: Strata, command: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`strata COMMAND ARGS` without `--root` (login and logout have no store), in its env."""
    return subprocess.run(
        [STRATA, command, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env=strata.env,
        stdin=None if input is not None else subprocess.DEVNULL,
        check=False,
    )


def layer_digests(registry: RegistryServer, ref: str = "1", repo: str = REPO) -> list[str]:
    import json

    manifest = json.loads(registry.get_manifest(repo, ref)[0])
    return [layer["digest"] for layer in manifest["layers"]]


def blob_digests(paths: Sequence[str]) -> list[str]:
    """The digests named by blob request paths (…/blobs/sha256:HEX[?…])."""
    return [p.split("/blobs/", 1)[1].split("?", 1)[0] for p in paths if "/blobs/sha256:" in p]


@dataclass(frozen=True, slots=True)
class StoreState:
    images: tuple[tuple[str, tuple[str, ...]], ...]
    layers: tuple[str, ...]

    @classmethod
    def of(cls, root: Path) -> StoreState:
        store = ImageStore(root)
        return cls(
            tuple(sorted((r.id, tuple(r.tags)) for r in store.images())),
            tuple(store.layers()),
        )


def tmp_entries(root: Path) -> list[str]:
    try:
        return os.listdir(ImageStore(root).tmp_dir)
    except FileNotFoundError:
        return []


def assert_one_line(done: subprocess.CompletedProcess[str]) -> str:
    """Exit 125, nothing on stdout, one `strata: ...` line on stderr (-q: no progress)."""
    assert done.returncode == 125, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("strata: "), lines[0]
    assert done.stdout == ""
    return lines[0]


def assert_failed_cleanly(
    done: subprocess.CompletedProcess[str], root: Path, before: StoreState
) -> str:
    """A failed pull: one line, exit 125, and the store as it was, with no staging left over."""
    line = assert_one_line(done)
    assert StoreState.of(root) == before
    assert tmp_entries(root) == []
    return line


def interrupt(
    strata: Strata, command: str, *args: str, ready: threading.Event, release: threading.Event
) -> tuple[int, str, str]:
    """Start `strata COMMAND ARGS`, send it SIGINT once `ready` is set (the proxy holds its
    transfer), and return its exit status, stdout and stderr. `release` is set whatever happens,
    so the proxy lets go of the connection; the process is killed if it outlives the test."""
    proc = strata.popen(command, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert ready.wait(60), f"strata {command} never reached the held transfer"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err
