"""A user without root loads the busybox image into their own store and runs it (owners are
not kept: the files belong to the user, who is root in the container)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.runtime.conftest import Strata
from tests.runtime.test_rootless import rootless as rootless

from .test_load import IMAGE_ID, _archive


def test_rootless_load_and_run(rootless: tuple[Strata, list[str], bool]) -> None:
    strata, _, _ = rootless
    done = strata.run("load", "-i", str(_archive("oci")), check=True)
    assert done.stdout == "Loaded image: localhost/uniontest:1\n"
    layers = Path(strata.root) / "images/layers"
    assert all(os.stat(layers / d).st_uid == strata.user for d in os.listdir(layers))
    run = strata.run("run", "--rm", IMAGE_ID[:12], check=True)
    assert run.stdout.split() == ["FOO=bar", "reborn", "n"]
    run = strata.run("run", "--rm", "uniontest:1", "stat", "-c", "%u %a", "/opt/suid", check=True)
    assert run.stdout == "0 4755\n"


def test_rootless_commit_records_container_owners(rootless: tuple[Strata, list[str], bool]) -> None:
    """The upper's files belong to the user on disk, to root in the container: the committed
    layer must say root (the container's view), or the image would hand them to a stranger."""
    import io
    import tarfile

    from images.store import ImageStore
    from images.tarsplit import rebuild

    strata, _, _ = rootless
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    strata.run("run", "--name", "rc", "uniontest:1", "sh", "-c", "echo x > /opt/new", check=True)
    strata.run("commit", "rc", "rc:1", check=True)
    store = ImageStore(Path(strata.root))
    diff_id = store.get("rc:1").layers[-1]
    data = b"".join(rebuild(store.map_path(diff_id), store.layer_path(diff_id)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        owners = {m.name: (m.uid, m.gid) for m in tar.getmembers()}
    assert owners["opt/new"] == (0, 0), owners
    run = strata.run("run", "--rm", "rc:1", "stat", "-c", "%u %g", "/opt/new", check=True)
    assert run.stdout == "0 0\n"
    strata.run("rm", "rc", check=True)
