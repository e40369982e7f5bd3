"""Real registries for the registry tests: Debian's docker-registry on 127.0.0.1, a token server,
a fault-injecting proxy, and ways to put images into them.

Everything here listens on 127.0.0.1 only, on a port the kernel picked, and is stopped at the end
of the `with` block that started it, also when the test fails. No real host name is ever looked up.

- `RegistryServer`: `docker-registry serve config.yml` (distribution 2.8.2, unpacked by
  scripts/setup.sh, never installed: the package would start a service on every interface) with a
  storage root in a tmp dir and its log in a file. Modes: plain HTTP, TLS with htpasswd basic auth
  (a test CA made here), or Bearer tokens from a `TokenServer`. Its access log tells a test which
  requests reached it (`requests()`, `blob_gets()`, `blob_puts()`).
- `TokenServer`: the docker token protocol in a thread: checks basic credentials (or lets
  anonymous clients pull chosen repositories), signs ES256 JWTs with an `x5c` header whose
  certificate the registry trusts, and counts token requests per scope, so a test can assert that
  a client caches its tokens.
- `FaultProxy`: an HTTP proxy in front of a registry that forwards everything (Range requests too;
  Location headers rewritten to itself) and injects faults on request: a status, altered blob
  bytes, a connection cut mid-body, a redirect loop, an oversized manifest. It records what it saw.
- `seed()` copies a test archive into a registry with skopeo (an independent client);
  `push_index()` writes a multi-platform OCI index by plain HTTP calls.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

# shared with `strata bench registry`, which runs the same registry binary
from bench.registry import REGISTRY_BIN as REGISTRY_BIN
from bench.registry import free_port as free_port

SKOPEO: Final = "skopeo"
READY_TIMEOUT: Final = 20.0  # seconds for the registry to answer /v2/
STOP_TIMEOUT: Final = 10.0  # seconds for it to exit after SIGTERM, before SIGKILL
HTTP_TIMEOUT: Final = 30.0

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT: Final = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

# One access-log line (gorilla's combined format):
# 127.0.0.1 - - [05/Dec/2026:01:40:00 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "agent"
_ACCESS_LINE: Final = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) ')


def skip_unless_registry() -> None:
    """Skip the calling test, with a reason, when the registry binary or skopeo is missing."""
    if not REGISTRY_BIN.is_file():
        pytest.skip(f"{REGISTRY_BIN} is missing (run scripts/setup.sh as root)")
    if shutil.which(SKOPEO) is None:
        pytest.skip("skopeo is not installed (run scripts/setup.sh as root)")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -------------------------------------------------------------------------------------------------
# a test CA


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its key, both PEM, written to files."""

    cert: Path
    key: Path
    cert_der: bytes
    private_key: ec.EllipticCurvePrivateKey


class TestCA:
    """A throwaway certificate authority: a server certificate for 127.0.0.1 and localhost (the
    registry's TLS) and a signing certificate (the token server's JWT key), both issued by it.

    `cert_dir` holds `ca.crt` alone, laid out as containers' --cert-dir expects (*.crt = CAs).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strata test CA")])
        self._name = name
        self.cert = (
            self._builder(name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = directory / "ca.pem"
        self.cert_pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.cert_dir = directory / "certs.d"
        self.cert_dir.mkdir()
        shutil.copy(self.cert_pem, self.cert_dir / "ca.crt")

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, name: str, *, server: bool) -> Issued:
        """A leaf certificate: for a TLS server on 127.0.0.1/localhost, or (server=False) a plain
        signing certificate without extended key usage, as the registry wants for token keys."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = self._builder(subject, key.public_key())
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = self.directory / f"{name}.crt"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER), key)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.cert_pem))


# -------------------------------------------------------------------------------------------------
# plain HTTP calls (http.client: no DNS, no proxies from the environment)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def http_request(
    url: str,
    method: str = "GET",
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Response:
    """One request to a 127.0.0.1 URL; no redirects followed. Header names come back lower-case."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost"), url
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=HTTP_TIMEOUT, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target or "/", body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -------------------------------------------------------------------------------------------------
# the token server


class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1:<free port>, serving `handler` in a daemon thread
    from construction until `stop()` (the token server's and the fault proxy's)."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=STOP_TIMEOUT)


class TokenServer:
    """The docker registry token protocol (GET realm?service=..&scope=..) on 127.0.0.1.

    `users` are the accepted basic credentials (wrong ones get 401). Without credentials a client
    is granted pull on the repositories in `anonymous_pull`, nothing elsewhere (the registry then
    answers 401). Tokens are ES256 JWTs whose header carries the signing certificate (`x5c`),
    issued by the CA the registry is told to trust (`rootcertbundle`). `requests` counts the
    token requests per scope string ("repository:NAME:pull,push"; several scopes of one request
    are joined by a space).
    """

    def __init__(
        self,
        ca: TestCA,
        *,
        users: Mapping[str, str] | None = None,
        anonymous_pull: Sequence[str] = (),
        service: str = "strata-test-registry",
        issuer: str = "strata-test-issuer",
        expires_in: int = 300,
    ) -> None:
        self.users = dict(users or {})
        self.anonymous_pull = set(anonymous_pull)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.signer = ca.issue("token-signer", server=False)
        self.roots = ca.cert_pem  # the registry's rootcertbundle: the signer's issuer
        self.requests: Counter[str] = Counter()
        self.accounts: list[str | None] = []
        self._lock = threading.Lock()
        self._http: LocalHTTPServer | None = None

    @property
    def realm(self) -> str:
        assert self._http is not None, "the token server is not running"
        return f"http://127.0.0.1:{self._http.port}/token"

    def __enter__(self) -> Self:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = LocalHTTPServer(Handler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            self._http.stop()

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
        scopes = query.get("scope", [])
        account: str | None = None
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if self.users.get(user) != password or not user:
                self._reply(req, 401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            account = user
        with self._lock:
            self.requests[" ".join(scopes)] += 1
            self.accounts.append(account)
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if account is not None:
                granted = wanted
            elif name in self.anonymous_pull:
                granted = [a for a in wanted if a == "pull"]
            else:
                granted = []
            access.append({"type": kind, "name": name, "actions": granted})
        token = self.sign(account or "", access)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._reply(
            req,
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": now,
            },
        )

    def sign(self, subject: str, access: Sequence[Mapping[str, object]]) -> str:
        """An ES256 JWT as distribution's token authenticator checks it."""
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self.signer.cert_der).decode()],
        }
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self.signer.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    @staticmethod
    def _reply(req: http.server.BaseHTTPRequestHandler, status: int, doc: object) -> None:
        data = json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        if status == 401:
            req.send_header("WWW-Authenticate", 'Basic realm="strata-test-token"')
        req.end_headers()
        req.wfile.write(data)


# -------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    status: int


class RegistryServer:
    """Debian's docker-registry on 127.0.0.1:<free port>, in one of three modes.

    - plain HTTP (default), anonymous push and pull;
    - `tls=True` with `users`: HTTPS with a certificate from a fresh `TestCA` (`.ca`), and
      htpasswd basic auth (bcrypt) for those users;
    - `token=TokenServer(...)`: Bearer token auth (its realm, service, issuer; the CA as
      rootcertbundle); plain HTTP unless `tls=True`.

    Deleting is enabled. The process is stopped on exit from the `with` block (SIGTERM by PID,
    SIGKILL after STOP_TIMEOUT), and its storage and log are in `directory`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        tls: bool = False,
        users: Mapping[str, str] | None = None,
        token: TokenServer | None = None,
        ca: TestCA | None = None,
    ) -> None:
        if users and token is not None:
            raise ValueError("htpasswd users and a token server are exclusive")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.users = dict(users or {})
        self.token = token
        self.ca = ca if ca is not None else (TestCA(directory / "ca") if tls else None)
        self.storage = directory / "storage"
        self.log_path = directory / "registry.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._marks = 0

    # --- addresses and credentials

    @property
    def host(self) -> str:
        """127.0.0.1:PORT, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def cert_dir(self) -> Path:
        """A --cert-dir holding the test CA (TLS mode only)."""
        assert self.ca is not None, "a plain HTTP registry has no CA"
        return self.ca.cert_dir

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.ca.ssl_context() if self.tls and self.ca is not None else None

    def credentials(self) -> tuple[str, str] | None:
        """Some working user and password (htpasswd or token mode), or None."""
        users = self.users or (self.token.users if self.token is not None else {})
        return next(iter(users.items()), None)

    # --- lifecycle

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self.tls:
            assert self.ca is not None
            server = self.ca.issue("registry", server=True)
            lines += ["  tls:", f"    certificate: {server.cert}", f"    key: {server.key}"]
        if self.users:
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                    for user, password in self.users.items()
                )
            )
            lines += ["auth:", "  htpasswd:", "    realm: strata-test", f"    path: {htpasswd}"]
        elif self.token is not None:
            assert self.token.signer is not None
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token.realm}",
                f"    service: {self.token.service}",
                f"    issuer: {self.token.issuer}",
                f"    rootcertbundle: {self.token.roots}",
            ]
        lines += ["health:", "  storagedriver:", "    enabled: false"]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> Self:
        skip_unless_registry()
        try:
            for attempt in range(3):
                self.port = free_port()
                config = self.directory / "config.yml"
                config.write_text(self._config())
                with self.log_path.open("ab") as log:
                    self._log_offset = log.tell()
                    self._proc = subprocess.Popen(
                        [str(REGISTRY_BIN), "serve", str(config)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    )
                if self._wait_ready():
                    return self
                # exited: another process took the port between free_port() and bind? retry
                if b"address already in use" not in self._log_tail().encode() or attempt == 2:
                    raise RuntimeError(f"docker-registry exited early:\n{self._log_tail()}")
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def _wait_ready(self) -> bool:
        """Poll GET /v2/ until it answers 200 or 401; False if the process exited first."""
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                return False
            with contextlib.suppress(OSError, http.client.HTTPException):
                status = http_request(f"{self.url}/v2/", context=self.ssl_context()).status
                if status in (200, 401):
                    return True
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"docker-registry did not answer /v2/ within {READY_TIMEOUT}s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)  # a poll interval, not a wait for an assumed duration

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what reached it

    def settle(self) -> None:
        """Make sure the log holds every request answered so far.

        The access log line is written just after a response is sent, so a client may see its
        answer before the line exists. A marker request, answered after those, is waited for.
        """
        self._marks += 1
        marker = f"/v2/strata-log-mark/{self._marks}/tags/list"
        http_request(self.url + marker, context=self.ssl_context())
        deadline = time.monotonic() + READY_TIMEOUT
        while f" {marker} " not in self._log_tail_all():
            if time.monotonic() > deadline:
                raise RuntimeError(f"registry log never showed {marker}")
            time.sleep(0.01)

    def _log_tail_all(self) -> str:
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def requests(self) -> list[LoggedRequest]:
        """Every request the registry logged since it started (marker requests left out)."""
        self.settle()
        found = []
        for match in _ACCESS_LINE.finditer(self._log_tail_all()):
            method, path, status = match.groups()
            if "/strata-log-mark/" not in path:
                found.append(LoggedRequest(method, path, int(status)))
        return found

    def blob_gets(self) -> list[LoggedRequest]:
        """GETs of blobs that were answered with content (200 or 206)."""
        return [
            r
            for r in self.requests()
            if r.method == "GET" and "/blobs/sha256:" in r.path and r.status in (200, 206)
        ]

    def blob_puts(self) -> list[LoggedRequest]:
        """Completed blob uploads (the final PUT of an upload session, 201)."""
        return [
            r
            for r in self.requests()
            if r.method == "PUT" and "/blobs/uploads/" in r.path and r.status == 201
        ]

    def manifest_gets(self) -> list[LoggedRequest]:
        return [
            r for r in self.requests() if r.method in ("GET", "HEAD") and "/manifests/" in r.path
        ]

    # --- direct access

    def auth_headers(self, repo: str) -> dict[str, str]:
        """Credentials for direct calls on `repo`: basic (htpasswd mode), or a token signed here
        (token mode: not asked from the token server, so its request counts stay the client's)."""
        if self.token is not None:
            access = [{"type": "repository", "name": repo, "actions": ["pull", "push", "delete"]}]
            return {"Authorization": "Bearer " + self.token.sign("strata-test-helper", access)}
        creds = self.credentials() if self.users else None
        return {"Authorization": _basic(*creds)} if creds else {}

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(raw bytes, digest, media type) of a manifest or index."""
        resp = http_request(
            f"{self.url}/v2/{repo}/manifests/{ref}",
            headers={"Accept": MANIFEST_ACCEPT, **self.auth_headers(repo)},
            context=self.ssl_context(),
        )
        if resp.status != 200:
            raise RuntimeError(f"GET manifest {repo}:{ref}: {resp.status} {resp.body[:200]!r}")
        return resp.body, sha256_digest(resp.body), resp.headers["content-type"]

    def get_blob(self, repo: str, digest: str) -> bytes:
        resp = http_request(
            f"{self.url}/v2/{repo}/blobs/{digest}",
            headers=self.auth_headers(repo),
            context=self.ssl_context(),
        )
        if resp.status != 200:
            raise RuntimeError(f"GET blob {repo}@{digest}: {resp.status}")
        return resp.body

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload a blob (POST, then one PUT with the digest); returns its digest."""
        digest = sha256_digest(data)
        start = http_request(
            f"{self.url}/v2/{repo}/blobs/uploads/",
            "POST",
            body=b"",
            headers=self.auth_headers(repo),
            context=self.ssl_context(),
        )
        if start.status != 202:
            raise RuntimeError(f"POST upload {repo}: {start.status} {start.body[:200]!r}")
        location = urllib.parse.urljoin(self.url + "/", start.headers["location"])
        sep = "&" if "?" in location else "?"
        done = http_request(
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            "PUT",
            body=data,
            headers={"Content-Type": "application/octet-stream", **self.auth_headers(repo)},
            context=self.ssl_context(),
        )
        if done.status != 201:
            raise RuntimeError(f"PUT upload {repo}: {done.status} {done.body[:200]!r}")
        return digest

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        resp = http_request(
            f"{self.url}/v2/{repo}/manifests/{ref}",
            "PUT",
            body=data,
            headers={"Content-Type": media_type, **self.auth_headers(repo)},
            context=self.ssl_context(),
        )
        if resp.status != 201:
            raise RuntimeError(f"PUT manifest {repo}:{ref}: {resp.status} {resp.body[:300]!r}")
        return sha256_digest(data)

    def delete_manifest(self, repo: str, ref: str) -> None:
        _, digest, _ = self.get_manifest(repo, ref)
        resp = http_request(
            f"{self.url}/v2/{repo}/manifests/{digest}",
            "DELETE",
            headers=self.auth_headers(repo),
            context=self.ssl_context(),
        )
        if resp.status != 202:
            raise RuntimeError(f"DELETE manifest {repo}@{digest}: {resp.status}")


# -------------------------------------------------------------------------------------------------
# putting images in


def container_env(directory: Path) -> dict[str, str]:
    """An environment for skopeo/podman that reads no machine-wide registry config or creds."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "registries.conf"
    if not conf.exists():
        conf.write_text("unqualified-search-registries = []\n")
    auth = directory / "auth.json"
    if not auth.exists():
        auth.write_text('{"auths": {}}\n')
    return dict(
        os.environ,
        CONTAINERS_REGISTRIES_CONF=str(conf),
        REGISTRY_AUTH_FILE=str(auth),
    )


def skopeo_args(registry: RegistryServer, prefix: str = "") -> list[str]:
    """TLS and credential options of skopeo for `registry` (prefix "src-"/"dest-" for copy)."""
    args = []
    if registry.tls:
        args.append(f"--{prefix}cert-dir={registry.cert_dir}")
    else:
        args.append(f"--{prefix}tls-verify=false")
    creds = registry.credentials()
    if creds is not None:
        args.append(f"--{prefix}creds={creds[0]}:{creds[1]}")
    return args


def skopeo(registry: RegistryServer, *args: str, timeout: float = 120.0) -> str:
    """Run skopeo with an environment of its own (no machine registries.conf or auth file)."""
    done = subprocess.run(
        [SKOPEO, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=container_env(registry.directory / "skopeo"),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args[:2])} failed:\n{done.stderr}")
    return done.stdout


def seed(registry: RegistryServer, source: Path, dest: str, *, fmt: str | None = None) -> str:
    """Copy an image archive or OCI layout into `registry` as `dest` ("repo:tag") with skopeo.

    `fmt` is the skopeo transport (oci-archive, docker-archive, oci); guessed from the file name
    when omitted. Returns the manifest digest as the registry stores it.
    """
    if fmt is None:
        name = source.name
        fmt = (
            "docker-archive"
            if "docker-archive" in name
            else "oci-archive"
            if name.endswith(".tar")
            else "oci"
        )
    skopeo(
        registry,
        "copy",
        "--insecure-policy",
        "-q",
        *skopeo_args(registry, "dest-"),
        f"{fmt}:{source}",
        f"docker://{registry.host}/{dest}",
    )
    repo, _, tag = dest.rpartition(":")
    return registry.get_manifest(repo, tag)[1]


def skopeo_inspect(registry: RegistryServer, ref: str, *, raw: bool = False) -> dict[str, object]:
    """`skopeo inspect [--raw] docker://HOST/ref` as JSON."""
    out = skopeo(
        registry,
        "inspect",
        *(["--raw"] if raw else []),
        *skopeo_args(registry),
        f"docker://{registry.host}/{ref}",
    )
    doc: dict[str, object] = json.loads(out)
    return doc


@dataclass(frozen=True, slots=True)
class PlatformImage:
    """One entry of an index that `push_index` wrote."""

    platform: str  # os/arch[/variant]
    manifest_digest: str
    config_digest: str  # == the image id a client computes


@dataclass
class Index:
    digest: str
    images: list[PlatformImage] = field(default_factory=list)

    def for_platform(self, platform: str) -> PlatformImage:
        (found,) = [i for i in self.images if i.platform == platform]
        return found


def push_index(
    registry: RegistryServer, repo: str, tag: str, source_tag: str, platforms: Sequence[str]
) -> Index:
    """Write an OCI index `repo:tag` with one image manifest per platform ("os/arch[/variant]").

    Each is the image at `repo:source_tag` (an OCI image manifest, as `seed` writes it) with the
    config's os/architecture/variant changed, so each platform has its own config digest (its
    image id) over the same layers.
    """
    raw, _, media_type = registry.get_manifest(repo, source_tag)
    if media_type != OCI_MANIFEST:
        raise ValueError(f"{repo}:{source_tag} is {media_type}, not an OCI image manifest")
    manifest = json.loads(raw)
    config = json.loads(registry.get_blob(repo, manifest["config"]["digest"]))
    index: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    result = Index(digest="")
    entries: list[dict[str, object]] = []
    for platform in platforms:
        os_name, arch, *rest = platform.split("/")
        variant = rest[0] if rest else None
        this_config = dict(config, os=os_name, architecture=arch)
        this_config.pop("variant", None)
        if variant:
            this_config["variant"] = variant
        config_bytes = json.dumps(this_config).encode()
        config_digest = registry.put_blob(repo, config_bytes)
        this_manifest = dict(
            manifest,
            config=dict(manifest["config"], digest=config_digest, size=len(config_bytes)),
        )
        manifest_bytes = json.dumps(this_manifest).encode()
        manifest_digest = registry.put_manifest(
            repo, sha256_digest(manifest_bytes), manifest_bytes, OCI_MANIFEST
        )
        desc_platform: dict[str, str] = {"os": os_name, "architecture": arch}
        if variant:
            desc_platform["variant"] = variant
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": desc_platform,
            }
        )
        result.images.append(PlatformImage(platform, manifest_digest, config_digest))
    index["manifests"] = entries
    index_bytes = json.dumps(index).encode()
    result.digest = registry.put_manifest(repo, tag, index_bytes, OCI_INDEX)
    return result


# -------------------------------------------------------------------------------------------------
# the fault proxy


@dataclass
class Fault:
    """One injected fault: applies to requests whose "METHOD /path?query" matches `pattern`,
    `times` times (None: always). `kind` is status, corrupt, cut, stall, no_range,
    redirect_loop or oversized."""

    pattern: re.Pattern[str]
    kind: str
    times: int | None
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    cut_after: int = 0
    size: int = 0
    hits: int = 0
    # a stall: set once the first bytes are out; the connection is held until `release` is set
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str  # with the query string
    range: str | None  # the Range header
    status: int  # what the proxy answered (0 if the connection was cut before a status)
    fault: str | None  # the kind of fault injected, if any


_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


class FaultProxy:
    """A plain HTTP proxy on 127.0.0.1 in front of `registry` that can inject faults.

    Clients address the proxy as if it were the registry (`.host`): requests are forwarded with
    their headers (Range included), responses come back with Location headers pointing at the
    proxy. Bodies are buffered whole on both sides (test images are small), which keeps fault
    injection simple. Faults are matched in the order added; the first that applies wins.
    """

    def __init__(self, registry: RegistryServer) -> None:
        self.registry = registry
        self.faults: list[Fault] = []
        self.seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._http: LocalHTTPServer | None = None

    # --- addresses

    @property
    def host(self) -> str:
        assert self._http is not None, "the proxy is not running"
        return f"127.0.0.1:{self._http.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # --- faults

    def _add(self, pattern: str, kind: str, times: int | None, **kw: object) -> Fault:
        fault = Fault(re.compile(pattern), kind, times, **kw)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(fault)
        return fault

    def fail(
        self,
        pattern: str,
        status: int,
        *,
        times: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer matching requests with `status` (and `headers`, e.g. Retry-After) instead."""
        return self._add(pattern, "status", times, status=status, headers=dict(headers or {}))

    def corrupt(self, pattern: str, *, times: int | None = None) -> Fault:
        """Alter one byte of matching response bodies (same length, wrong digest)."""
        return self._add(pattern, "corrupt", times)

    def cut(self, pattern: str, after: int, *, times: int | None = None) -> Fault:
        """Send the headers and the first `after` bytes of matching bodies, then close."""
        return self._add(pattern, "cut", times, cut_after=after)

    def stall(self, pattern: str, after: int, *, times: int | None = None) -> Fault:
        """Send the headers and the first `after` bytes of matching bodies, set the fault's
        `stalled` event, and hold the connection until its `release` is set (or the proxy
        stops): a download in progress, for interrupting the client."""
        return self._add(pattern, "stall", times, cut_after=after)

    def ignore_range(self, pattern: str, *, times: int | None = None) -> Fault:
        """Forward matching requests without their Range header: the registry answers 200
        with the whole body, as one that does not support ranges would."""
        return self._add(pattern, "no_range", times)

    def redirect_loop(self, pattern: str, *, times: int | None = None) -> Fault:
        """Answer matching requests with a 307 to themselves."""
        return self._add(pattern, "redirect_loop", times)

    def oversized(self, pattern: str, size: int = 10 << 20, *, times: int | None = None) -> Fault:
        """Answer matching requests with a 200 manifest-typed body of `size` bytes."""
        return self._add(pattern, "oversized", times, size=size)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def requests(self, method: str | None = None, pattern: str = "") -> list[SeenRequest]:
        """What the proxy saw (optionally only `method`, and paths that match `pattern`)."""
        with self._lock:
            seen = list(self.seen)
        return [
            r for r in seen if (method is None or r.method == method) and re.search(pattern, r.path)
        ]

    def _take(self, line: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                if fault.pattern.search(line):
                    fault.hits += 1
                    return fault
        return None

    def _record(
        self, req: http.server.BaseHTTPRequestHandler, status: int, fault: str | None
    ) -> None:
        with self._lock:
            self.seen.append(
                SeenRequest(req.command, req.path, req.headers.get("Range"), status, fault)
            )

    # --- lifecycle

    def __enter__(self) -> Self:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = HTTP_TIMEOUT

            def _any(self) -> None:
                try:
                    owner._handle(self)
                except (ConnectionError, TimeoutError):
                    # the client gave up (an oversized body, a redirect loop): not our error
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = LocalHTTPServer(Handler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            for fault in self.faults:
                fault.release.set()
        if self._http is not None:
            self._http.stop()

    # --- one request

    @staticmethod
    def _read_body(req: http.server.BaseHTTPRequestHandler) -> bytes:
        if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(req.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(req.rfile.read(size))
                req.rfile.readline()
        length = int(req.headers.get("Content-Length") or 0)
        return req.rfile.read(length) if length else b""

    def _send(
        self,
        req: http.server.BaseHTTPRequestHandler,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        length: int | None = None,
        fault: str | None = None,
    ) -> None:
        self._record(req, status, fault)  # first: the client may hang up while we write
        req.send_response(status)
        for name, value in headers:
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(body) if length is None else length))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)
        req.wfile.flush()

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        body = self._read_body(req)
        fault = self._take(f"{req.command} {req.path}")
        if fault is not None and fault.kind == "status":
            doc = json.dumps({"errors": [{"code": "INJECTED", "message": f"{fault.status}"}]})
            self._send(
                req,
                fault.status,
                [("Content-Type", "application/json"), *fault.headers.items()],
                doc.encode(),
                fault="status",
            )
            return
        if fault is not None and fault.kind == "redirect_loop":
            self._send(
                req, 307, [("Location", f"{self.url}{req.path}")], b"", fault="redirect_loop"
            )
            return
        if fault is not None and fault.kind == "oversized":
            filler = b'{"schemaVersion":2,"padding":"' + b"a" * fault.size + b'"}'
            self._send(req, 200, [("Content-Type", OCI_MANIFEST)], filler, fault="oversized")
            return
        no_range = fault is not None and fault.kind == "no_range"
        status, headers, data = self._forward(req, body, drop_range=no_range)
        if no_range:
            self._send(req, status, headers, data, fault="no_range")
            return
        if fault is not None and fault.kind == "corrupt" and data:
            altered = bytearray(data)
            altered[len(altered) // 2] ^= 0xFF
            self._send(req, status, headers, bytes(altered), fault="corrupt")
            return
        if fault is not None and fault.kind in ("cut", "stall") and req.command != "HEAD":
            self._record(req, status, fault.kind)
            req.send_response(status)
            for name, value in headers:
                req.send_header(name, value)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data[: fault.cut_after])
            req.wfile.flush()
            if fault.kind == "stall":
                fault.stalled.set()
                fault.release.wait(STOP_TIMEOUT * 10)
            req.close_connection = True
            with contextlib.suppress(OSError):
                req.connection.shutdown(socket.SHUT_RDWR)
            return
        length = int({k.lower(): v for k, v in headers}.get("content-length", len(data)))
        self._send(
            req,
            status,
            [(k, v) for k, v in headers if k.lower() != "content-length"],
            data,
            length=length if req.command == "HEAD" else None,
        )

    def _forward(
        self, req: http.server.BaseHTTPRequestHandler, body: bytes, *, drop_range: bool = False
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        reg = self.registry
        conn: http.client.HTTPConnection
        if reg.tls:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", reg.port, timeout=HTTP_TIMEOUT, context=reg.ssl_context()
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=HTTP_TIMEOUT)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        if drop_range:
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        headers["Host"] = reg.host
        try:
            conn.request(
                req.command,
                req.path,
                body=body if body or req.command in ("POST", "PUT", "PATCH") else None,
                headers=headers,
            )
            resp = conn.getresponse()
            data = resp.read()
            out = []
            for name, value in resp.getheaders():
                lower = name.lower()
                if lower in _HOP_BY_HOP and lower != "content-length":
                    continue
                if lower == "location":
                    value = value.replace(reg.url, self.url)
                out.append((name, value))
            return resp.status, out, data
        finally:
            conn.close()


# -------------------------------------------------------------------------------------------------
# fixtures' building blocks


@contextlib.contextmanager
def registry_dir(prefix: str = "strata-reg-") -> Iterator[Path]:
    """A tmp dir for a registry that is removed afterwards (pytest's tmp_path works too)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
