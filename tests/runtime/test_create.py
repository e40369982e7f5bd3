"""runtime.create: a container's config from the image's defaults, and its init layer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import images
from runtime.create import CreateRequest, build_init_layer, container_config
from runtime.state import StateRoot, Volume
from unionfs.errors import UsageError


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
