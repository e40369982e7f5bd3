"""A client of the OCI distribution API (registry API v2) on httpx and trio.

One `Session` talks to one registry host. It owns:

- **the transport**: HTTPS with the system CAs plus the host's `certs.d` directory (`*.crt` CAs,
  `*.cert`/`*.key` client certificates); for a registry that is insecure (listed so in
  registries.conf, on a loopback address, or `--tls-verify=false`), HTTPS without verification
  first and plain HTTP when the host does not speak TLS, as docker does.
- **authentication**: a request answered 401 is sent again with what its `WWW-Authenticate`
  challenge asks for: `Basic` credentials, or a `Bearer` token fetched from the challenge's realm
  for the service and the scopes needed (with the credentials when there are any, anonymously
  otherwise). Tokens are cached per scope set until they expire.
- **retries**: connection failures, 429 and 5xx answers are retried (`retries` times, after
  `Retry-After` when the registry gives one, else after `retry_delay` or a doubling delay from
  1 s). A blob download cut short resumes with `Range` where the registry allows it.
- **limits**: manifests and configs are read up to a bound (4 MiB and 16 MiB) while they stream;
  a blob beyond its descriptor's size is cut off. Redirects (blob storage elsewhere) are followed
  up to 10 times, and the `Authorization` header is never sent to another host.

Every failure is a `RegistryError`: one line, exit 125.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, TypeVar

import httpx
import trio

from unionfs.errors import UsageError

from .auth import Credentials, find_credentials
from .registries import Options as Options
from .registries import certs_dir_for

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MANIFEST: Final = 4 << 20  # containers/image refuses manifests above 4 MiB too
MAX_CONFIG: Final = 16 << 20
MAX_RETRY_AFTER: Final = 60.0  # a registry asking for a longer pause gets an error instead
USER_AGENT: Final = "strata/0.1"

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1: Final = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES: Final = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
_RETRY_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})


class RegistryError(UsageError):
    """A registry operation failed; one line for the user, exit 125."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, 125)
        self.status = status


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as the registry sent it: the exact bytes (their sha256 is `digest`)."""

    raw: bytes
    media_type: str
    digest: str


@dataclass
class _Token:
    value: str
    expires: float
    fetched: float = field(default_factory=time.monotonic)


@dataclass
class _Challenge:
    scheme: str  # "bearer" | "basic"
    params: dict[str, str] = field(default_factory=dict)


_PARAM: Final = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> _Challenge | None:
    """`Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "basic"):
        return None
    params = {
        m[1].lower(): (m[2] if m[2] is not None else m[3]).replace('\\"', '"')
        for m in _PARAM.finditer(rest)
    }
    return _Challenge(scheme.lower(), params)


def _causes(e: BaseException) -> list[BaseException]:
    """`e`, its causes and contexts, and the members of any exception group among them."""
    found: list[BaseException] = []
    pending: list[BaseException] = [e]
    while pending:
        x = pending.pop(0)
        if any(x is f for f in found):
            continue
        found.append(x)
        if isinstance(x, BaseExceptionGroup):
            pending += list(x.exceptions)
        for nxt in (x.__cause__, x.__context__):
            if nxt is not None:
                pending.append(nxt)
    return found


def _describe_transport(e: httpx.HTTPError) -> str:
    """A short reason for a transport failure, without httpx's class names."""
    causes = _causes(e)
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause})"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno is not None and cause.strerror:
            return cause.strerror.lower() if cause.strerror[0].isupper() else cause.strerror
    if isinstance(e, httpx.TooManyRedirects):
        return "too many redirects"
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    if isinstance(e, httpx.RemoteProtocolError):
        return "the connection was closed mid-response"
    return (str(e) or type(e).__name__).splitlines()[0][:200]


def _permanent(e: httpx.HTTPError) -> bool:
    """Transport failures that a retry cannot mend."""
    reason = _describe_transport(e)
    return reason.startswith(("TLS", "cannot resolve")) or reason == "too many redirects"


class Session:
    """One registry host (see the module doc). Use as `async with Session(...) as s:`."""

    def __init__(self, host: str, options: Options, *, insecure: bool) -> None:
        self.host = host
        self.options = options
        if options.tls_verify is not None:
            insecure = not options.tls_verify
        self.insecure = insecure
        self._scheme = "https"
        self._scheme_known = False
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._token_locks: dict[tuple[str, ...], trio.Lock] = {}
        self._basic: Credentials | None = None
        self._challenge: _Challenge | None = None
        self._creds_by_repo: dict[str, Credentials | None] = {}
        self._client: httpx.AsyncClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._stack = contextlib.AsyncExitStack()
        certs = certs_dir_for(host, options.cert_dir)
        self._verify: ssl.SSLContext | bool = (
            False if insecure else _ssl_context(certs, host, options.cert_dir is not None)
        )
        self._client_cert = _client_cert(certs)

    async def __aenter__(self) -> Session:
        timeout = httpx.Timeout(30.0, connect=15.0)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=8)
        verify: ssl.SSLContext | bool = self._verify
        if self._client_cert is not None and isinstance(verify, ssl.SSLContext):
            verify.load_cert_chain(*self._client_cert)
        self._client = await self._stack.enter_async_context(
            httpx.AsyncClient(
                verify=verify,
                timeout=timeout,
                limits=limits,
                follow_redirects=True,
                max_redirects=10,
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # -- the base URL ------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self._scheme}://{self.host}{path}"

    async def ping(self) -> None:
        """Find the scheme (for insecure registries) and the auth challenge: `GET /v2/`."""
        assert self._client is not None
        try:
            resp = await self._retrying(lambda: self._client_get("/v2/"), "")
        except RegistryError:
            if not self.insecure or self._scheme == "http":
                raise
            self._scheme = "http"
            resp = await self._retrying(lambda: self._client_get("/v2/"), "")
        self._scheme_known = True
        if resp.status_code == 401:
            self._challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
        elif resp.status_code not in (200, 404):
            raise RegistryError(
                f"{self.host}: not a registry (GET /v2/ answered {resp.status_code})"
            )

    async def _client_get(self, path: str) -> httpx.Response:
        assert self._client is not None
        return await self._client.get(self.url(path))

    # -- authentication ------------------------------------------------------------------------

    def credentials(self, repo: str) -> Credentials | None:
        if self.options.creds is not None:
            return self.options.creds
        if repo not in self._creds_by_repo:
            self._creds_by_repo[repo] = find_credentials(
                f"{self.host}/{repo}" if repo else self.host, self.options.authfile
            ) or (
                find_credentials("docker.io", self.options.authfile)
                if self.host == "registry-1.docker.io"
                else None
            )
        return self._creds_by_repo[repo]

    async def _authorization(
        self, scopes: tuple[str, ...], repo: str, renew_before: float | None
    ) -> str | None:
        """The Authorization header for a request needing `scopes`, as the challenge asks; a
        cached token fetched before `renew_before` (one the registry refused) is renewed."""
        challenge = self._challenge
        if challenge is None:
            return None
        creds = self.credentials(repo)
        if challenge.scheme == "basic":
            if creds is None:
                raise RegistryError(
                    f"{self.host}: authentication required (use login or --creds)", 401
                )
            return f"Basic {creds.encoded()}"
        # one fetch per scope set at a time: parallel first requests share its token
        lock = self._token_locks.setdefault(scopes, trio.Lock())
        async with lock:
            token = self._tokens.get(scopes)
            stale = token is None or token.expires < time.monotonic()
            refused = (
                renew_before is not None and token is not None and token.fetched <= renew_before
            )
            if stale or refused:
                token = await self._fetch_token(challenge, scopes, creds)
                self._tokens[scopes] = token
        assert token is not None
        return f"Bearer {token.value}"

    async def _fetch_token(
        self, challenge: _Challenge, scopes: tuple[str, ...], creds: Credentials | None
    ) -> _Token:
        assert self._client is not None
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise RegistryError(f"{self.host}: the Bearer challenge has no usable realm")
        params: list[tuple[str, str]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        params += [("scope", s) for s in scopes]
        headers = {"Authorization": f"Basic {creds.encoded()}"} if creds else {}
        what = f"token from {realm}"

        async def get() -> httpx.Response:
            assert self._client is not None
            query = urllib.parse.urlencode(params)
            return await self._client.get(
                f"{realm}{'&' if '?' in realm else '?'}{query}", headers=headers
            )

        resp = await self._retrying(get, what)
        if resp.status_code in (401, 403):
            raise RegistryError(
                f"{self.host}: {'wrong username or password' if creds else 'authentication required (use login or --creds)'}"
                f" (the token service answered {resp.status_code})",
                resp.status_code,
            )
        if resp.status_code != 200:
            raise RegistryError(f"{self.host}: {what}: HTTP {resp.status_code}", resp.status_code)
        try:
            data = resp.json()
            value = data.get("token") or data.get("access_token")
            expires_in = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"{self.host}: the token service sent no token") from None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"{self.host}: the token service sent no token")
        return _Token(value, time.monotonic() + max(expires_in - 10, 5))

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        repo: str,
        scopes: Iterable[str],
        headers: dict[str, str] | None = None,
        content: bytes | Callable[[], AsyncIterator[bytes]] | None = None,
        stream: bool = False,
        what: str = "",
        absolute: bool = False,
    ) -> httpx.Response:
        """`method path` with authentication and retries. Any status is returned (the caller
        judges it) except 401, which is answered once with fresh authorization, and the
        retried ones. With `stream`, the caller must close the response."""
        assert self._client is not None
        if not self._scheme_known:
            await self.ping()
        scope_key = tuple(sorted(set(scopes)))
        target = path if absolute else self.url(path)
        what = what or f"{method} {path}"

        async def send(renew_before: float | None) -> httpx.Response:
            assert self._client is not None
            hdrs = dict(headers or {})
            auth = await self._authorization(scope_key, repo, renew_before)
            if auth is not None:
                hdrs["Authorization"] = auth
            body = content() if callable(content) else content
            req = self._client.build_request(method, target, headers=hdrs, content=body)
            return await self._client.send(req, stream=True)

        async def attempt() -> httpx.Response:
            sent = time.monotonic()
            resp = await send(None)
            if resp.status_code == 401:
                challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
                await resp.aclose()
                if challenge is None:
                    raise RegistryError(f"{self.host}: {what}: unauthorized", 401)
                had = self._challenge
                self._challenge = challenge
                resp = await send(sent)  # a token fetched before this one was refused
                if resp.status_code == 401:
                    await resp.aclose()
                    creds = self.credentials(repo)
                    reason = (
                        "wrong username or password, or no access"
                        if creds and (had is not None or challenge.scheme == "basic")
                        else "authentication required (use login or --creds)"
                    )
                    raise RegistryError(f"{self.host}: {what}: {reason}", 401)
            return resp

        resp = await self._retrying(attempt, what)
        if not stream:
            try:
                await resp.aread()
            finally:
                await resp.aclose()
        return resp

    async def _retrying(self, attempt: Callable[[], object], what: str) -> httpx.Response:
        """`attempt()` again after transport errors, 429 and 5xx, up to `retries` more times."""
        tries = 0
        while True:
            delay = self._delay(tries)
            try:
                resp = await attempt()  # type: ignore[misc]
                assert isinstance(resp, httpx.Response)
            except httpx.HTTPError as e:
                if _permanent(e) or tries >= self.options.retries:
                    where = f"{self.host}: {what}" if what else self.host
                    raise RegistryError(f"{where}: {_describe_transport(e)}") from None
                log.info("%s: %s: %s; retrying in %.1f s", self.host, what, e, delay)
            else:
                if resp.status_code not in _RETRY_STATUS:
                    return resp
                after = _retry_after(resp.headers.get("retry-after"))
                await resp.aclose()
                if tries >= self.options.retries or (after is not None and after > MAX_RETRY_AFTER):
                    raise RegistryError(
                        f"{self.host}: {what or 'GET /v2/'}: {_status_text(resp.status_code)}"
                        + (f" (retried {tries} times)" if tries else ""),
                        resp.status_code,
                    )
                if after is not None:
                    delay = after
            tries += 1
            await trio.sleep(delay)

    def _delay(self, tries: int) -> float:
        if self.options.retry_delay is not None:
            return self.options.retry_delay
        return float(min(2**tries, 30))

    # -- the distribution API ---------------------------------------------------------------

    async def login(self) -> None:
        """Check the credentials: `GET /v2/` authorized as the registry asks (Basic, or a Bearer
        token for no particular scope, as `docker login` does)."""
        resp = await self.request("GET", "/v2/", repo="", scopes=[], what="login")
        check_status(resp, self.host, "login", (200,))

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """The manifest (or index) `ref` (tag or digest) of `repo`, checked against the digest
        when `ref` is one, and against the registry's Docker-Content-Digest otherwise."""
        path = f"/v2/{repo}/manifests/{ref}"
        resp = await self.request(
            "GET",
            path,
            repo=repo,
            scopes=[f"repository:{repo}:pull"],
            headers={"Accept": ", ".join((*MANIFEST_TYPES, *DOCKER_SCHEMA1))},
            stream=True,
            what=f"manifest {repo}:{ref}"
            if not ref.startswith("sha256:")
            else f"manifest {repo}@{ref}",
        )
        try:
            check_status(resp, self.host, f"manifest {ref} of {repo}", (200,))
            raw = await read_limited(resp, MAX_MANIFEST, f"{self.host}: manifest {ref} of {repo}")
        finally:
            await resp.aclose()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            raise RegistryError(
                f"{self.host}: manifest {ref} of {repo}: content does not match its digest"
            )
        given = resp.headers.get("docker-content-digest", "")
        if given.startswith("sha256:") and given != digest and not ref.startswith("sha256:"):
            raise RegistryError(
                f"{self.host}: manifest {ref} of {repo}: content does not match the registry's digest {given}"
            )
        media = resp.headers.get("content-type", "").partition(";")[0].strip()
        return Manifest(raw, media, digest)

    async def get_blob_bytes(self, repo: str, digest: str, size: int | None, limit: int) -> bytes:
        """A small blob (a config) in memory, checked against its digest and size."""
        resp = await self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            repo=repo,
            scopes=[f"repository:{repo}:pull"],
            stream=True,
            what=f"blob {digest[:19]}",
        )
        try:
            check_status(resp, self.host, f"blob {digest} of {repo}", (200,))
            data = await read_limited(resp, limit, f"{self.host}: blob {digest[:19]}")
        finally:
            await resp.aclose()
        if size is not None and len(data) != size:
            raise RegistryError(
                f"{self.host}: blob {digest[:19]}: {len(data)} bytes, its descriptor says {size}"
            )
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(
                f"{self.host}: blob {digest[:19]}: content does not match its digest"
            )
        return data

    async def fetch_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        out: IO[bytes],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream blob `digest` of `repo` into `out`, checking its size and digest as it comes.

        A connection cut mid-blob is resumed with `Range: bytes=N-` (the bytes already hashed
        are kept) when the registry answers 206, and restarted from zero when it answers 200;
        the bytes are then never trusted until the whole blob matches its digest."""
        h = hashlib.sha256()
        got = 0
        failures = 0
        what = f"blob {digest[:19]}"
        while True:
            headers = {"Range": f"bytes={got}-"} if got else {}
            try:
                resp = await self.request(
                    "GET",
                    f"/v2/{repo}/blobs/{digest}",
                    repo=repo,
                    scopes=[f"repository:{repo}:pull"],
                    headers=headers,
                    stream=True,
                    what=what,
                )
                try:
                    if got and resp.status_code == 200:
                        out.seek(0)
                        out.truncate()
                        h, got = hashlib.sha256(), 0
                    elif got and resp.status_code == 206:
                        start = _range_start(resp.headers.get("content-range", ""))
                        if start != got:
                            raise RegistryError(
                                f"{self.host}: {what}: the registry resumed at the wrong offset"
                            )
                    else:
                        check_status(resp, self.host, f"blob {digest} of {repo}", (200,))
                    async for chunk in resp.aiter_raw():
                        got += len(chunk)
                        if got > size:
                            raise RegistryError(
                                f"{self.host}: {what}: larger than the {size} bytes its descriptor says"
                            )
                        h.update(chunk)
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                finally:
                    await resp.aclose()
            except httpx.HTTPError as e:
                failures += 1
                if failures > self.options.retries or _permanent(e):
                    raise RegistryError(f"{self.host}: {what}: {_describe_transport(e)}") from None
                log.info("%s: %s cut at %d bytes (%s); resuming", self.host, what, got, e)
                await trio.sleep(self._delay(failures - 1))
                continue
            if got < size:
                failures += 1
                if failures > self.options.retries:
                    raise RegistryError(
                        f"{self.host}: {what}: {got} bytes, its descriptor says {size}"
                    )
                await trio.sleep(self._delay(failures - 1))
                continue
            break
        if "sha256:" + h.hexdigest() != digest:
            raise RegistryError(f"{self.host}: {what}: content does not match its digest")


def check_status(resp: httpx.Response, host: str, what: str, ok: tuple[int, ...]) -> None:
    """RegistryError for a status not in `ok`, with the registry's error code when it sent one."""
    if resp.status_code in ok:
        return
    raise RegistryError(f"{host}: {what}: {_status_text(resp.status_code)}", resp.status_code)


def _status_text(status: int) -> str:
    text = {
        401: "unauthorized",
        403: "access denied",
        404: "not found",
        405: "not allowed by the registry",
        408: "request timeout",
        413: "too large for the registry",
        416: "range not satisfiable",
        429: "too many requests (rate limited)",
    }.get(status, "server error" if status >= 500 else "unexpected answer")
    return f"{text} (HTTP {status})"


async def read_limited(resp: httpx.Response, limit: int, what: str) -> bytes:
    """The body of `resp`, refusing more than `limit` bytes (whatever Content-Length says)."""
    length = resp.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what}: {int(length)} bytes, more than the {limit} allowed")
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise RegistryError(f"{what}: more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _range_start(content_range: str) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", content_range.strip())
    return int(m[1]) if m else None


def _ssl_context(certs: Path | None, host: str, explicit: bool) -> ssl.SSLContext:
    """The system CAs, plus every `*.crt` in the host's certs.d directory."""
    ctx = ssl.create_default_context()
    if certs is None:
        return ctx
    try:
        names = sorted(p for p in certs.iterdir() if p.suffix == ".crt")
    except OSError as e:
        if explicit:
            raise RegistryError(f"--cert-dir {certs}: {e.strerror}") from None
        return ctx
    for path in names:
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (ssl.SSLError, OSError) as e:
            raise RegistryError(f"{path}: not a PEM CA certificate ({e})") from None
    return ctx


def _client_cert(certs: Path | None) -> tuple[str, str] | None:
    """A `NAME.cert` + `NAME.key` pair in the certs.d directory, for registries that ask for a
    client certificate."""
    if certs is None:
        return None
    try:
        for cert in sorted(certs.glob("*.cert")):
            key = cert.with_suffix(".key")
            if key.is_file():
                return str(cert), str(key)
    except OSError:
        return None
    return None


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """`trio.run(main)` for a command: a failure inside a nursery comes out as itself, not as an
    exception group, so the command's error boundary prints its one line (Ctrl-C stays
    KeyboardInterrupt)."""
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        raise _first(group) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to report from a group: Ctrl-C first, then strata's own errors."""
    flat: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                flat.append(e)

    walk(group)
    for kind in (KeyboardInterrupt, UsageError, OSError):
        for e in flat:
            if isinstance(e, kind):
                return e
    return flat[0]
