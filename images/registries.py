"""Which registries strata may talk to, and how: containers' `registries.conf`.

strata reads the file podman, skopeo and CRI-O read, so one host has one policy:

- `$CONTAINERS_REGISTRIES_CONF` when set (that file alone: handy for tests and scripts);
- otherwise `~/.config/containers/registries.conf` for a rootless user who has one, else
  `/etc/containers/registries.conf`, each followed by the drop-ins of its `registries.conf.d/`
  (`*.conf`, in name order; a later file's top-level keys win, `[[registry]]` tables with the same
  prefix replace earlier ones, `[aliases]` merge).

What strata uses from it (version 2 format):

    unqualified-search-registries = ["registry.example.com", "docker.io"]
    [[registry]]
    prefix = "registry.example.com/team"     # defaults to `location`
    location = "mirror-of-team.internal:5000"  # where such names are fetched from
    insecure = true                          # plain HTTP, or TLS without verification
    blocked = true                           # never contacted
    [[registry.mirror]]
    location = "cache.internal:5000"         # tried first, for pulls only
    insecure = true
    [aliases]
    "debian" = "docker.io/library/debian"

A short name (`debian`) is resolved through `[aliases]`, then each search registry in order. With
neither, it is an error saying how to qualify the name: strata never picks a registry itself.
Registries on a loopback address (`localhost`, `127.0.0.0/8`, `::1`) may use plain HTTP without
being listed, as in docker.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .auth import Credentials, host_euid
from .reference import Reference, parse

SYSTEM_CONF: Final = Path("/etc/containers/registries.conf")
CERTS_DIRS: Final = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


class RegistriesConfError(UsageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 125)


@dataclass(frozen=True, slots=True)
class Options:
    """What the user chose on the command line for talking to registries."""

    tls_verify: bool | None = None  # None: as registries.conf and the host's address say
    cert_dir: Path | None = None
    creds: Credentials | None = None
    authfile: Path | None = None
    retries: int = 3
    retry_delay: float | None = None  # None: 1 s, doubling


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A place to fetch a repository from: `host` (host[:port]) and the repository path there."""

    host: str
    path: str
    insecure: bool
    mirror: bool = False


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[tuple[str, bool], ...] = ()  # (location, insecure)


@dataclass(frozen=True, slots=True)
class RegistriesConf:
    """The parsed configuration; `sources` names the files read, for messages."""

    search: tuple[str, ...] = ()
    entries: tuple[RegistryEntry, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # the files read
    consulted: tuple[str, ...] = ()  # the files looked for (some may not exist)

    def entry_for(self, name: str) -> RegistryEntry | None:
        """The `[[registry]]` whose prefix matches `name` (domain/path) most closely."""
        best: RegistryEntry | None = None
        for entry in self.entries:
            p = entry.prefix
            if (name == p or name.startswith((p + "/", p + ":"))) and (
                best is None or len(p) > len(best.prefix)
            ):
                best = entry
        return best

    def insecure(self, host: str) -> bool:
        entry = self.entry_for(host)
        return (entry is not None and entry.insecure) or is_loopback(host)

    def endpoints(self, ref: Reference, *, pull: bool) -> list[Endpoint]:
        """Where `ref` is fetched from (mirrors first, for pulls) or pushed to."""
        if ref.short:
            raise AssertionError("a short name has no endpoint; resolve it first")
        entry = self.entry_for(ref.name)
        if entry is None:
            host = ref.api_host
            return [Endpoint(host, ref.path, is_loopback(host))]
        if entry.blocked:
            raise RegistriesConfError(
                f"registry {entry.prefix} is blocked in {', '.join(self.sources) or 'registries.conf'}"
            )
        rest = ref.name[len(entry.prefix) :]
        found: list[Endpoint] = []
        mirrors = entry.mirrors if pull else ()
        for location, insecure in mirrors:
            found.append(_endpoint(location + rest, insecure, mirror=True))
        found.append(_endpoint(entry.location + rest, entry.insecure))
        return found

    def candidates(self, ref: Reference) -> list[Reference]:
        """The qualified names a short name stands for, in the order they are tried."""
        if not ref.short:
            return [ref]
        alias = self.aliases.get(ref.path)
        if alias is not None:
            target = parse(alias)
            return [
                Reference(target.domain, target.path, ref.tag, ref.digest)
                if ref.tag or ref.digest
                else target
            ]
        if not self.search:
            where = ", ".join(self.consulted or self.sources) or str(SYSTEM_CONF)
            raise RegistriesConfError(
                f"short name {str(ref)!r}: no unqualified-search-registries are configured"
                f" ({where}); use a fully qualified name such as docker.io/library/{ref}"
            )
        return [ref.with_domain(domain) for domain in self.search]


def _endpoint(name: str, insecure: bool, *, mirror: bool = False) -> Endpoint:
    host, _, path = name.partition("/")
    if host == "docker.io":
        host = "registry-1.docker.io"
    return Endpoint(host, path, insecure or is_loopback(host), mirror)


def is_loopback(host: str) -> bool:
    """Whether `host[:port]` names this machine by a loopback name or address."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def conf_files() -> list[Path]:
    """The files read, in order (see the module doc)."""
    explicit = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if explicit:
        return [Path(explicit)]
    main = SYSTEM_CONF
    if host_euid() != 0:
        user = Path(os.path.expanduser("~/.config/containers/registries.conf"))
        if user.is_file():
            main = user
    dropins = main.with_name("registries.conf.d")
    try:
        extra = sorted(p for p in dropins.iterdir() if p.suffix == ".conf" and p.is_file())
    except OSError:
        extra = []
    return [main, *extra] if main.is_file() else extra


def load_conf(files: list[Path] | None = None) -> RegistriesConf:
    """The configuration in `files` (default: `conf_files()`); a malformed file is an error
    naming it, a missing one is no configuration."""
    search: list[str] = []
    entries: dict[str, RegistryEntry] = {}
    aliases: dict[str, str] = {}
    sources: list[str] = []
    paths = conf_files() if files is None else files
    for path in paths:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise RegistriesConfError(f"{path}: cannot read it ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise RegistriesConfError(f"{path}: invalid TOML ({e})") from None
        sources.append(str(path))
        if "unqualified-search-registries" in data:
            search = _strings(
                data["unqualified-search-registries"], path, "unqualified-search-registries"
            )
        for table in _tables(data.get("registry", []), path, "registry"):
            entry = _entry(table, path)
            entries[entry.prefix] = entry
        raw_aliases = data.get("aliases", {})
        if not isinstance(raw_aliases, dict):
            raise RegistriesConfError(f"{path}: [aliases] is not a table")
        for name, target in raw_aliases.items():
            if not isinstance(target, str):
                raise RegistriesConfError(f"{path}: alias {name!r} is not a string")
            aliases[name] = target
    return RegistriesConf(
        tuple(search),
        tuple(entries.values()),
        aliases,
        tuple(sources),
        tuple(str(p) for p in paths) or (str(SYSTEM_CONF),),
    )


def _strings(value: object, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistriesConfError(f"{path}: {key} is not an array of strings")
    return [str(v) for v in value]


def _tables(value: object, path: Path, key: str) -> list[dict[str, object]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RegistriesConfError(f"{path}: [[{key}]] is not an array of tables")
    return value


def _entry(table: dict[str, object], path: Path) -> RegistryEntry:
    def text(key: str) -> str:
        value = table.get(key, "")
        if not isinstance(value, str):
            raise RegistriesConfError(f"{path}: [[registry]] {key} is not a string")
        return value

    def flag(t: dict[str, object], key: str) -> bool:
        value = t.get(key, False)
        if not isinstance(value, bool):
            raise RegistriesConfError(f"{path}: [[registry]] {key} is not true or false")
        return value

    location = text("location").rstrip("/")
    prefix = text("prefix").rstrip("/") or location
    if not prefix:
        raise RegistriesConfError(f"{path}: a [[registry]] has neither prefix nor location")
    mirrors = tuple(
        (str(m.get("location", "")).rstrip("/"), flag(m, "insecure"))
        for m in _tables(table.get("mirror", []), path, "registry.mirror")
    )
    return RegistryEntry(
        prefix=prefix,
        location=location or prefix,
        insecure=flag(table, "insecure"),
        blocked=flag(table, "blocked"),
        mirrors=tuple(m for m in mirrors if m[0]),
    )


def certs_dir_for(host: str, explicit: Path | None) -> Path | None:
    """The directory of CA certificates (`*.crt`) and client keys (`*.cert`/`*.key`) for
    `host`: `--cert-dir`, else `certs.d/<host>` of containers or docker (a rootless user's
    `~/.config/containers/certs.d` first)."""
    if explicit is not None:
        return explicit
    dirs = list(CERTS_DIRS)
    if host_euid() != 0:
        dirs.insert(0, Path(os.path.expanduser("~/.config/containers/certs.d")))
    for base in dirs:
        candidate = base / host
        if candidate.is_dir():
            return candidate
    return None
