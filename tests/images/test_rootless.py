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
