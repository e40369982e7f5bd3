"""Image references: `[DOMAIN/]PATH[:TAG][@DIGEST]`, as the distribution project defines them.

One grammar serves the store (the names images are kept under) and the registry client (where
to fetch them from). A reference is *qualified* when its first component is a registry: it holds a
`.` or a `:`, or is `localhost`; otherwise it is a short name, which `images.registries` resolves
through the configured search registries (strata never picks a default registry by itself).

`docker.io` names are normalised as docker does: `docker.io/debian` is `docker.io/library/debian`,
served from `registry-1.docker.io`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from unionfs.errors import UsageError

# The distribution reference grammar (distribution/reference): [domain[:port]/]path[:tag], where
# the path is lower-case components separated by '/', each alphanumerics joined by '.', '_',
# '__' or dashes; a name is at most 255 characters.
_DOMAIN_PART: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
DOMAIN: Final = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG: Final = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST: Final = r"sha256:[0-9a-f]{64}"
NAME_TAG: Final = re.compile(
    rf"(?P<name>(?:{DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?"
)
_FULL: Final = re.compile(rf"{NAME_TAG.pattern}(?:@(?P<digest>{_DIGEST}))?")
_DOMAIN_RE: Final = re.compile(DOMAIN)
_PATH: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")

DOCKER_HUB: Final = "docker.io"
DOCKER_HUB_API: Final = "registry-1.docker.io"


def is_domain(component: str) -> bool:
    """Whether the first component of a name is a registry (docker's rule)."""
    return (
        "." in component or ":" in component or component == "localhost"
    ) and _DOMAIN_RE.fullmatch(component) is not None


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference. `domain` is "" for a short name; `tag` is "" when a digest alone names
    the image; `digest` is "" unless given (`name@sha256:...`)."""

    domain: str
    path: str
    tag: str
    digest: str

    @property
    def short(self) -> bool:
        return not self.domain

    @property
    def name(self) -> str:
        """`domain/path` (the repository's full name), or the path of a short name."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def api_host(self) -> str:
        """The host:port the registry API is served from (docker.io's is another host)."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def manifest_ref(self) -> str:
        """What `/v2/<name>/manifests/<ref>` takes: the digest when given, else the tag."""
        return self.digest or self.tag

    @property
    def stored_tag(self) -> str:
        """`name:tag` as the store keeps it; "" for a reference by digest only."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    def with_domain(self, domain: str) -> Reference:
        """A short name qualified with a search registry (docker.io adds `library/`)."""
        return parse(f"{domain}/{self}")

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return self.name + tag + (f"@{self.digest}" if self.digest else "")


def parse(ref: str) -> Reference:
    """A reference; UsageError (exit 125) unless it follows the grammar. A missing tag is `latest`
    unless a digest is given."""
    m = _FULL.fullmatch(ref)
    if m is None or len(m["name"]) > 255:
        shown = ref if len(ref) <= 100 else ref[:100] + "..."
        raise UsageError(f"invalid image reference {shown!r}", 125)
    name, tag, digest = m["name"], m["tag"] or "", m["digest"] or ""
    first, sep, rest = name.partition("/")
    if sep and is_domain(first):
        domain, path = first, rest
    else:
        domain, path = "", name
    if _PATH.fullmatch(path) is None:
        raise UsageError(f"invalid image reference {ref!r}: repository names are lower case", 125)
    if domain in ("index.docker.io", DOCKER_HUB_API):
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not tag and not digest:
        tag = "latest"
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
