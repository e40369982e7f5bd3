"""Registry credentials in containers' `auth.json` (podman, skopeo, buildah), docker's read too.

    {"auths": {"registry.example.com": {"auth": "<base64 of user:password>"}}}

`strata login` writes, `strata logout` removes, and pulls and pushes read:

1. `--authfile PATH`, else `$REGISTRY_AUTH_FILE`, else containers' default: root's
   `/run/containers/0/auth.json`, a user's `$XDG_RUNTIME_DIR/containers/auth.json` (or
   `~/.config/containers/auth.json` without a runtime dir). This is the file login writes.
2. When reading, and no explicit file was given: also `~/.config/containers/auth.json` and
   docker's `~/.docker/config.json` (`$DOCKER_CONFIG/config.json`), so `docker login` and
   `podman login` work for strata too. Credential helpers (`credsStore`, `credHelpers`) are not
   run: strata uses only credentials written in the files.

Keys may name a registry (`host[:port]`) or a repository namespace (`host/team`); the most
specific key that matches wins, as in containers/image. Docker Hub's key is also accepted in
docker's own spelling, `https://index.docker.io/v1/`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from unionfs.errors import UsageError


class AuthFileError(UsageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 125)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """`USER[:PASS]` as `--creds` takes it (an empty password when none is given)."""
        user, _, password = text.partition(":")
        if not user:
            raise AuthFileError("--creds: give USER[:PASSWORD]")
        return cls(user, password)

    def encoded(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def host_euid() -> int:
    """Our effective uid as the host sees it. Inside a rootless user namespace (`strata run`
    enters one before it looks its image up) the kernel says 0, but the files to use are the
    user's, not root's."""
    euid = os.geteuid()
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = (int(x) for x in line.split())
                if inside <= euid < inside + count:
                    return outside + euid - inside
    except (OSError, ValueError):
        pass
    return euid


def default_auth_file() -> Path:
    """The file `strata login` writes (see the module doc)."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    if host_euid() == 0:
        return Path("/run/containers/0/auth.json")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "containers" / "auth.json"
    return Path(os.path.expanduser("~/.config/containers/auth.json"))


def _read_files(explicit: Path | None) -> list[Path]:
    if explicit is not None:
        return [explicit]
    files = [default_auth_file()]
    if not os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.path.expanduser("~/.config/containers/auth.json")))
        docker = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
        files.append(Path(docker) / "config.json")
    return list(dict.fromkeys(files))


def _load(path: Path) -> dict[str, object]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise AuthFileError(f"{path}: cannot read it ({e.strerror})") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuthFileError(f"{path}: not a JSON auth file") from None
    if not isinstance(data, dict):
        raise AuthFileError(f"{path}: not a JSON auth file")
    return data


def _auths(path: Path) -> dict[str, object]:
    auths = _load(path).get("auths", {})
    if not isinstance(auths, dict):
        raise AuthFileError(f"{path}: 'auths' is not a JSON object")
    return auths


def normal_key(key: str) -> str:
    """An auth key as strata compares and writes it: no scheme, no trailing slash, and Docker
    Hub as `docker.io` (docker's own `https://index.docker.io/v1/` included)."""
    key = key.removeprefix("https://").removeprefix("http://").rstrip("/")
    if key in ("index.docker.io", "index.docker.io/v1"):
        return "docker.io"
    if key.startswith("index.docker.io/"):
        return "docker.io" + key.removeprefix("index.docker.io")
    return key


def find_credentials(name: str, authfile: Path | None = None) -> Credentials | None:
    """Credentials for repository `name` (`domain/path`), or None for anonymous access."""
    for path in _read_files(authfile):
        auths = {normal_key(k): v for k, v in _auths(path).items()}
        candidate = name
        while candidate:
            entry = auths.get(candidate)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                return _decode(entry["auth"], path, candidate)
            candidate = candidate.rpartition("/")[0]
    return None


def _decode(auth: str, path: Path, key: str) -> Credentials:
    try:
        user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, sep, password = "", "", ""
    if not sep or not user:
        raise AuthFileError(f"{path}: the entry for {key} is not base64 of USER:PASSWORD")
    return Credentials(user, password)


def store_credentials(key: str, creds: Credentials, authfile: Path | None = None) -> Path:
    """Write `creds` for `key` (registry or namespace) into the auth file; its path."""
    path = authfile or default_auth_file()
    data = _load(path)
    auths = data.get("auths", {})
    if not isinstance(auths, dict):
        raise AuthFileError(f"{path}: 'auths' is not a JSON object")
    auths[key] = {"auth": creds.encoded()}
    data["auths"] = auths
    _write(path, data)
    return path


def remove_credentials(key: str | None, authfile: Path | None = None) -> bool:
    """Remove the entry for `key` (every entry when None); whether there was one."""
    path = authfile or default_auth_file()
    data = _load(path)
    auths = data.get("auths", {})
    if not isinstance(auths, dict):
        raise AuthFileError(f"{path}: 'auths' is not a JSON object")
    if key is None:
        found = bool(auths)
        auths = {}
    else:
        keys = [k for k in auths if normal_key(k) == normal_key(key)]
        found = bool(keys)
        for k in keys:
            del auths[k]
    if found:
        data["auths"] = auths
        _write(path, data)
    return found


def _write(path: Path, data: dict[str, object]) -> None:
    """Atomically, readable by its owner only (it holds passwords)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent="\t")
                f.write("\n")
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise AuthFileError(f"{path}: cannot write it ({e.strerror})") from None
