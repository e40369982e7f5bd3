"""`RUN --mount=...` of a Dockerfile (BuildKit's syntax): what each mount asks for, parsed and
checked before anything runs. Pure: the builder (build.py) makes the directories and binds them.

- `type=bind` (the default): `source` (default the root) of the build context, or of a stage or
  an image given by `from`, at `target`; read-only unless `rw`, and writes never reach the
  source (the builder binds a copy).
- `type=cache`: a directory kept under the store across builds, by `id` (default the target),
  created with `mode` (0755), `uid` and `gid` (0); `sharing=shared|locked|private`.
- `type=tmpfs`: a tmpfs for the RUN only, of at most `size` bytes (`64m`, `1g`: BuildKit's
  units) when given.
- `type=secret`: the `--secret id=...` file given to `strata build`, at `target` (default
  `/run/secrets/ID`) or in the environment variable `env`, mode 0400 unless `mode`;
  `required=true` fails the build when the secret is not given.

Keys and values are comma-separated `key=value` (CSV quoting, as BuildKit's parser).
"""

from __future__ import annotations

import csv
import posixpath
import re
from dataclasses import dataclass
from typing import Final

KINDS: Final = frozenset({"bind", "cache", "tmpfs", "secret"})
# BuildKit's tmpfs `size` (go-units RAMInBytes): a number, maybe with k, m, g, t (1024s), b
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TARGET_KEYS: Final = ("target", "dst", "destination")
_SOURCE_KEYS: Final = ("source", "src")
_BOOL_KEYS: Final = frozenset({"rw", "readwrite", "ro", "readonly", "required"})
_KEYS: Final = {
    "bind": {"type", *_TARGET_KEYS, *_SOURCE_KEYS, "from", "rw", "readwrite", "ro", "readonly"},
    "cache": {
        "type",
        *_TARGET_KEYS,
        "id",
        "sharing",
        "mode",
        "uid",
        "gid",
        "ro",
        "readonly",
    },
    "tmpfs": {"type", *_TARGET_KEYS, "size"},
    "secret": {"type", *_TARGET_KEYS, "id", "env", "mode", "uid", "gid", "required"},
}


class MountSpecError(ValueError):
    """A `--mount` value strata cannot take; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class RunMount:
    kind: str
    target: str  # absolute, cleaned; "" for a secret given only as an environment variable
    source: str = ""  # bind: the path in the context or in `from`'s root
    from_ref: str = ""  # bind: a stage or an image
    id: str = ""  # cache, secret
    read_only: bool = False
    sharing: str = "shared"
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    required: bool = False
    env: str = ""  # secret: the variable it is given in
    size: int | None = None  # tmpfs: its size limit in bytes

    def key(self) -> dict[str, object]:
        """What of the mount goes into the RUN's cache key (never a secret's or a cache's
        contents, as Docker)."""
        return {
            k: v
            for k, v in (
                ("type", self.kind),
                ("target", self.target),
                ("source", self.source),
                ("from", self.from_ref),
                ("id", self.id),
                ("ro", self.read_only),
                ("mode", self.mode),
                ("uid", self.uid),
                ("gid", self.gid),
                ("env", self.env),
                ("size", self.size),
            )
            if v not in ("", None)
        }


def parse_mount(text: str, workdir: str) -> RunMount:
    """One `--mount=` value (relative targets are relative to WORKDIR, as in BuildKit)."""
    fields: dict[str, str] = {}
    for item in next(csv.reader([text])) if text else []:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep and name not in _BOOL_KEYS:
            raise MountSpecError(f"{item!r}: expected key=value")
        fields[name] = value if sep else "true"
    kind = fields.get("type", "bind")
    if kind not in KINDS:
        raise MountSpecError(f"type={kind}: expected bind, cache, tmpfs or secret")
    unknown = sorted(set(fields) - _KEYS[kind])
    if unknown:
        raise MountSpecError(f"{unknown[0]}= is not supported for type={kind}")
    target = next((fields[k] for k in _TARGET_KEYS if k in fields), "")
    ident = fields.get("id", "")
    if kind == "secret":
        if not ident:
            raise MountSpecError("type=secret needs id=")
        if not target and not fields.get("env"):
            target = f"/run/secrets/{ident}"
    if not target and kind != "secret":
        raise MountSpecError(f"type={kind} needs target=")
    if target:
        target = posixpath.normpath(posixpath.join(workdir, target))
        if target == "/":
            raise MountSpecError("target=/ is not allowed")
    rw = _bool(fields, "rw") or _bool(fields, "readwrite")
    ro = _bool(fields, "ro") or _bool(fields, "readonly")
    sharing = fields.get("sharing", "shared")
    if sharing not in ("shared", "locked", "private"):
        raise MountSpecError(f"sharing={sharing}: expected shared, locked or private")
    return RunMount(
        kind=kind,
        target=target,
        source=next((fields[k] for k in _SOURCE_KEYS if k in fields), ""),
        from_ref=fields.get("from", ""),
        id=ident or (target if kind == "cache" else ""),
        read_only=(kind == "bind" and not rw) or (kind == "cache" and ro),
        sharing=sharing,
        mode=_number(fields, "mode", 8),
        uid=_number(fields, "uid", 10) or 0,
        gid=_number(fields, "gid", 10) or 0,
        required=_bool(fields, "required"),
        env=fields.get("env", ""),
        size=_size(fields["size"]) if "size" in fields else None,
    )


def _size(value: str) -> int:
    m = _SIZE.fullmatch(value.strip())
    if m is None:
        raise MountSpecError(f"size={value}: expected a size such as 64m or 1g")
    size = int(float(m[1]) * _UNITS[m[2].lower()])
    if size <= 0 or size >= 2**63:
        raise MountSpecError(f"size={value}: out of range")
    return size


def _bool(fields: dict[str, str], name: str) -> bool:
    value = fields.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise MountSpecError(f"{name}={value}: expected true or false")
    return value in ("true", "1")


def _number(fields: dict[str, str], name: str, base: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    try:
        number = int(value, base)
    except ValueError:
        raise MountSpecError(f"{name}={value}: not a number") from None
    if number < 0 or (base == 8 and number > 0o7777):
        raise MountSpecError(f"{name}={value}: out of range")
    return number


def parse_secret(text: str) -> tuple[str, str, str]:
    """`strata build --secret id=ID[,src=PATH|,env=VAR][,type=file|env]`: (id, kind, where);
    docker's defaults: `src` (or `source`) a file, `env` an environment variable, neither: the
    environment variable named like the id."""
    fields: dict[str, str] = {}
    for item in next(csv.reader([text])) if text else []:
        name, sep, value = item.partition("=")
        if not sep:
            raise MountSpecError(f"--secret {text}: expected key=value pairs")
        fields[name.strip().lower()] = value
    ident = fields.pop("id", "")
    if not ident:
        raise MountSpecError(f"--secret {text}: id= is required")
    kind = fields.pop("type", "")
    source = fields.pop("src", fields.pop("source", ""))
    env = fields.pop("env", "")
    if fields:
        raise MountSpecError(f"--secret {text}: unknown key {sorted(fields)[0]}=")
    if kind not in ("", "file", "env"):
        raise MountSpecError(f"--secret {text}: type= is file or env")
    if kind == "env" or (not kind and env) or (not kind and not source):
        return ident, "env", env or source or ident
    if not source:
        raise MountSpecError(f"--secret {text}: type=file needs src=")
    return ident, "file", source
