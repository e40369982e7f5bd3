"""What the runtime needs to know about an image, and how an image reference is found.

An `ImageSpec` is its layers (directories, top first, as strata's `--lower`) and the parts of its
config that shape the process (env, entrypoint, cmd, working dir, user). An image reference is
looked up with a `Resolver` (the image store's, handed down by `strata.cli`); failing that it is
a rootfs directory given by path (a one-layer image). `--lower` gives the layers directly.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The OCI image config fields the runtime uses (`config.Env`, `Entrypoint`, ...)."""

    env: tuple[str, ...] = ()  # K=V
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # `80/tcp`, `53/udp` (the keys of ExposedPorts), for -P
    volumes: tuple[str, ...] = ()  # the keys of Volumes: an anonymous volume each (run, create)
    labels: tuple[tuple[str, str], ...] = ()  # Labels, under the container's --label
    stop_signal: str = ""  # StopSignal (STOPSIGNAL), what `strata stop` sends
    # Healthcheck (HEALTHCHECK, docker's HealthConfig; runtime.health) and Shell (SHELL: what
    # runs a CMD-SHELL check)
    healthcheck: dict[str, object] | None = None
    shell: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "env": list(self.env),
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "workdir": self.workdir,
            "user": self.user,
            "exposed_ports": list(self.exposed_ports),
            "volumes": list(self.volumes),
            "labels": dict(self.labels),
            "stop_signal": self.stop_signal,
            "healthcheck": self.healthcheck,
            "shell": list(self.shell),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ImageConfig:
        """From `to_json()`'s form (a container's recorded config)."""
        config = cls._from_fields(data, ("env", "entrypoint", "cmd", "workdir", "user"))
        exposed = data.get("exposed_ports") or []
        volumes = data.get("volumes") or []
        assert isinstance(exposed, list | tuple)
        assert isinstance(volumes, list | tuple)
        labels = data.get("labels") or {}
        assert isinstance(labels, dict)
        return replace(
            config,
            exposed_ports=tuple(str(p) for p in exposed),
            volumes=tuple(str(v) for v in volumes),
            labels=tuple((str(k), str(v)) for k, v in labels.items()),
            stop_signal=str(data.get("stop_signal") or ""),
            healthcheck=_healthcheck(data.get("healthcheck")),
            shell=_strings(data.get("shell")),
        )

    @classmethod
    def from_oci(cls, image_config: Mapping[str, object]) -> ImageConfig:
        """The fields of an OCI image config (the whole document: its `config` object holds
        them); values were type-checked when the image was loaded (images.load.check_config)."""
        inner = image_config.get("config") or {}
        assert isinstance(inner, dict)
        config = cls._from_fields(inner, ("Env", "Entrypoint", "Cmd", "WorkingDir", "User"))
        exposed = inner.get("ExposedPorts") or {}  # {"80/tcp": {}}: only the keys mean anything
        volumes = inner.get("Volumes") or {}  # {"/data": {}}: the same
        labels = inner.get("Labels") or {}
        return replace(
            config,
            exposed_ports=tuple(str(k) for k in exposed),
            volumes=tuple(str(k) for k in volumes if isinstance(volumes, dict)),
            labels=tuple((str(k), str(v)) for k, v in labels.items())
            if isinstance(labels, dict)
            else (),
            stop_signal=str(inner.get("StopSignal") or ""),
            healthcheck=_healthcheck(inner.get("Healthcheck")),
            shell=_strings(inner.get("Shell")),
        )

    @classmethod
    def _from_fields(cls, data: Mapping[str, object], keys: tuple[str, ...]) -> ImageConfig:
        """The fields named `keys` (env, entrypoint, cmd, workdir, user) of `data`."""
        env, entrypoint, cmd, workdir, user = keys

        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key) or []
            return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)

        return cls(
            env=strings(env),
            entrypoint=strings(entrypoint),
            cmd=strings(cmd),
            workdir=str(data.get(workdir) or ""),
            user=str(data.get(user) or ""),
        )


def _healthcheck(value: object) -> dict[str, object] | None:
    """An image config's `Healthcheck` (runtime.health runs it), if it is well formed (a
    hostile image's odd value is left out, as if it had none); None without one."""
    if not isinstance(value, dict):
        return None
    test = value.get("Test")
    if test is not None and not (isinstance(test, list) and all(isinstance(t, str) for t in test)):
        return None
    check: dict[str, object] = {"Test": list(test or [])}
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, int | None) or (number or 0) < 0:
            return None
        if number:
            check[key] = number
    return check


def _strings(value: object) -> tuple[str, ...]:
    """A list of strings of a config (anything else: none)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """An image ready to run: `layers` top first (absolute paths), its config, and its name."""

    ref: str
    layers: tuple[Path, ...]
    config: ImageConfig = field(default_factory=ImageConfig)


# (reference, state root) -> the image, or None when this resolver does not know it
Resolver = Callable[[str, Path], "ImageSpec | None"]


@dataclass(frozen=True, slots=True)
class ImageSource:
    """Where `run` and `create` get images beyond rootfs directories (the image store, handed
    down by `strata.cli`): the options it adds to their command line (`--pull`, registry
    options) and, for the parsed options, the resolver to use."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    resolver: Callable[[argparse.Namespace], Resolver]


def lookup_image(ref: str, root: Path, resolver: Resolver | None = None) -> ImageSpec:
    """The image called `ref`: what `resolver` finds for it (the image store of state root
    `root`), else a rootfs directory; UsageError "no such image" when neither knows it."""
    if not ref:
        raise UsageError("no image given", 125)
    if resolver is not None:
        spec = resolver(ref, root)
        if spec is not None:
            return spec
    path = Path(os.path.abspath(ref))
    if path.is_dir():
        return ImageSpec(ref=str(path), layers=(path,))
    if path.exists():
        raise UsageError(f"image {ref}: not a directory (give a rootfs directory)", 125)
    raise UsageError(f"no such image: {ref}", 125)


def layers_image(lowers: Sequence[str]) -> ImageSpec:
    """An image made of the `--lower` directories (top first)."""
    layers = []
    for lower in lowers:
        if not lower:
            raise UsageError("--lower: empty path", 125)
        path = Path(os.path.abspath(lower))
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "not a directory"
            raise UsageError(f"layer {lower}: {what}", 125)
        layers.append(path)
    ref = str(layers[0]) if len(layers) == 1 else f"{layers[0]} (+{len(layers) - 1} layers)"
    return ImageSpec(ref=ref, layers=tuple(layers))
