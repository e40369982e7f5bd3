"""runtime.images: the image lookup and the image config."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import images
from unionfs.errors import UsageError


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

    def resolver(ref: str, r: Path) -> images.ImageSpec | None:
        return spec if (ref, r) == ("named", root) else None

    assert images.lookup_image("named", root, resolver) is spec
    assert images.lookup_image(str(rootfs), root, resolver).layers == (rootfs,)
    two = images.layers_image([str(rootfs), str(tmp_path)])
    assert two.layers == (rootfs, tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        images.layers_image([str(tmp_path / "nope")])


def test_the_oci_image_config_gives_the_runtimes_fields() -> None:
    config = images.ImageConfig.from_oci(
        {
            "architecture": "amd64",
            "config": {
                "Env": ["PATH=/bin", "A=1"],
                "Entrypoint": ["/init"],
                "Cmd": ["run", "it"],
                "WorkingDir": "/app",
                "User": "app:app",
                "Labels": {"x": "y"},
            },
        }
    )
    assert config == images.ImageConfig(
        env=("PATH=/bin", "A=1"),
        entrypoint=("/init",),
        cmd=("run", "it"),
        workdir="/app",
        user="app:app",
        labels=(("x", "y"),),  # under the container's --label (runtime/runflags.py)
    )
    assert images.ImageConfig.from_oci({}) == images.ImageConfig()
    assert images.ImageConfig.from_oci({"config": {"Cmd": None}}).cmd == ()
