"""The multi-stage example of issue 17: a build stage FROM a Debian rootfs with gcc compiles a
small C program (its source a COPY here-document), and the final stage, FROM scratch, copies
only the static binary and runs it."""

from __future__ import annotations

import subprocess

import pytest

from images.store import ImageStore
from tests.helpers.images import DebianRootfs
from tests.runtime.conftest import Strata
from tests.runtime.test_rootless import rootless as rootless

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.fuse]

DOCKERFILE = """\
FROM debian-gcc:bookworm AS build
WORKDIR /src
COPY <<'EOF' hello.c
#include <stdio.h>
int main(int argc, char **argv) {
    printf("hello, %s\\n", argc > 1 ? argv[1] : "nobody");
    return 0;
}
EOF
RUN gcc -static -O2 -o /hello hello.c && strip /hello

FROM scratch
COPY --from=build /hello /hello
ENTRYPOINT ["/hello"]
CMD ["world"]
"""


def test_debian_multistage_example(debian_gcc_rootfs: DebianRootfs, strata: Strata) -> None:
    store = ImageStore(strata.root)
    rootfs_tar = strata.tmp / "bookworm-gcc.tar"
    tar = ["tar", "-C", str(debian_gcc_rootfs.path), "--numeric-owner", "--xattrs"]
    subprocess.run([*tar, "-cf", str(rootfs_tar), "."], check=True)
    strata.run("import", str(rootfs_tar), "debian-gcc:bookworm", check=True, timeout=600)
    rootfs_tar.unlink()
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)

    strata.run("build", "-t", "hello:1", str(ctx), check=True, timeout=600)
    rec = store.get("hello:1")
    (layer,) = rec.layers  # FROM scratch: only what COPY --from brought
    assert sorted(p.name for p in store.layer_path(layer).iterdir()) == ["hello"]
    config = rec.config["config"]
    assert isinstance(config, dict)
    assert (config["Entrypoint"], config["Cmd"]) == (["/hello"], ["world"])

    assert strata.run("run", "--rm", "hello:1", check=True).stdout == "hello, world\n"
    again = strata.run("run", "--rm", "hello:1", "strata", check=True)
    assert again.stdout == "hello, strata\n"
    rebuilt = strata.run("build", "-t", "hello:2", str(ctx), check=True, timeout=600)
    assert rebuilt.stdout.count("Using cache") == 6  # WORKDIR COPY RUN | COPY ENTRYPOINT CMD
    assert store.get("hello:2").id == rec.id


@pytest.mark.parametrize("rootless", ["subids"], indirect=True)
def test_debian_multistage_example_rootless(
    debian_gcc_rootfs: DebianRootfs, rootless: tuple[Strata, list[str], bool]
) -> None:
    """The same example built by a user without root: the rootfs imported into the user's
    store keeps its owners through the subordinate ids, and gcc runs in a rootless RUN."""
    import os

    user, _, _ = rootless
    rootfs_tar = user.tmp / "bookworm-gcc.tar"
    tar = ["tar", "-C", str(debian_gcc_rootfs.path), "--numeric-owner", "--xattrs"]
    subprocess.run([*tar, "-cf", str(rootfs_tar), "."], check=True)
    os.chmod(rootfs_tar, 0o644)
    done = user.run("import", str(rootfs_tar), "debian-gcc:bookworm", check=True, timeout=600)
    assert "skipped" in done.stderr  # /dev's nodes: only root of the host may make them
    rootfs_tar.unlink()
    shadow = user.run(
        "run", "--rm", "debian-gcc:bookworm", "stat", "-c", "%G", "/etc/shadow", check=True
    )
    assert shadow.stdout == "shadow\n"  # gid 42, a subordinate id on disk
    ctx = user.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    user.run("build", "-t", "hello:1", str(ctx), check=True, timeout=600)
    assert user.run("run", "--rm", "hello:1", check=True).stdout == "hello, world\n"
    user.run("rmi", "hello:1", "debian-gcc:bookworm", check=True)
    user.run("image", "prune", check=True)
    assert os.listdir(user.root / "images/layers") == []
