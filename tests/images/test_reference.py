"""Image references, registries.conf and auth.json: the parts of the registry client that decide
where to go and as whom, tested without a network."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from images.auth import (
    AuthFileError,
    Credentials,
    find_credentials,
    remove_credentials,
    store_credentials,
)
from images.distribution import parse_challenge
from images.policy import find_local
from images.reference import parse
from images.registries import RegistriesConfError, is_loopback, load_conf
from unionfs.errors import UsageError


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("debian", "", "debian", "latest", ""),
        ("debian:12", "", "debian", "12", ""),
        ("team/app", "", "team/app", "latest", ""),
        ("docker.io/debian", "docker.io", "library/debian", "latest", ""),
        ("index.docker.io/team/app:1", "docker.io", "team/app", "1", ""),
        ("127.0.0.1:5000/a/b:v1.2", "127.0.0.1:5000", "a/b", "v1.2", ""),
        ("localhost/x", "localhost", "x", "latest", ""),
        ("localhost:5000/x", "localhost:5000", "x", "latest", ""),
        ("quay.io/x@sha256:" + "a" * 64, "quay.io", "x", "", "sha256:" + "a" * 64),
        ("quay.io/x:1@sha256:" + "b" * 64, "quay.io", "x", "1", "sha256:" + "b" * 64),
    ],
)
def test_references_parse_as_docker_reads_them(
    text: str, domain: str, path: str, tag: str, digest: str
) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.short == (domain == "")


def test_docker_hub_is_served_from_its_api_host() -> None:
    ref = parse("docker.io/library/debian:12")
    assert ref.api_host == "registry-1.docker.io"
    assert str(ref) == "docker.io/library/debian:12"
    assert ref.stored_tag == "docker.io/library/debian:12"


@pytest.mark.parametrize(
    "text",
    ["", "UPPER/case", "a//b", "x:", "x@sha256:short", "-lead", "a" * 300, "/abs/path", "x:tag:2"],
)
def test_invalid_references_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(text)
    assert info.value.exit_code == 125
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.9.9.9", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
    ],
)
def test_loopback_registries_may_be_insecure(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _conf(tmp_path: Path, text: str, name: str = "registries.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_short_names_without_search_registries_say_how_to_qualify(tmp_path: Path) -> None:
    conf = load_conf([_conf(tmp_path, "")])
    with pytest.raises(RegistriesConfError) as info:
        conf.candidates(parse("debian:12"))
    message = str(info.value)
    assert "docker.io/library/debian:12" in message
    assert str(tmp_path / "registries.conf") in message


def test_search_registries_and_aliases_resolve_short_names(tmp_path: Path) -> None:
    conf = load_conf(
        [
            _conf(
                tmp_path,
                'unqualified-search-registries = ["r1.example:5000", "docker.io"]\n'
                '[aliases]\n"tools" = "quay.io/team/tools"\n',
            )
        ]
    )
    assert [str(r) for r in conf.candidates(parse("debian:12"))] == [
        "r1.example:5000/debian:12",
        "docker.io/library/debian:12",
    ]
    assert [str(r) for r in conf.candidates(parse("tools:2"))] == ["quay.io/team/tools:2"]
    assert [str(r) for r in conf.candidates(parse("quay.io/x:1"))] == ["quay.io/x:1"]


def test_registry_tables_rewrite_locations_add_mirrors_and_block(tmp_path: Path) -> None:
    conf = load_conf(
        [
            _conf(
                tmp_path,
                '[[registry]]\nprefix = "example.com/team"\nlocation = "10.1.2.3:5000/mirror"\n'
                'insecure = true\n[[registry.mirror]]\nlocation = "cache.internal:5000"\n'
                '[[registry]]\nlocation = "bad.example"\nblocked = true\n',
            )
        ]
    )
    pull = conf.endpoints(parse("example.com/team/app:1"), pull=True)
    assert [(e.host, e.path, e.insecure, e.mirror) for e in pull] == [
        ("cache.internal:5000", "app", False, True),
        ("10.1.2.3:5000", "mirror/app", True, False),
    ]
    push = conf.endpoints(parse("example.com/team/app:1"), pull=False)
    assert [(e.host, e.path) for e in push] == [("10.1.2.3:5000", "mirror/app")]
    assert conf.endpoints(parse("example.com/other:1"), pull=True)[0].host == "example.com"
    with pytest.raises(RegistriesConfError, match="blocked"):
        conf.endpoints(parse("bad.example/x"), pull=True)


def test_drop_ins_override_search_and_merge_aliases(tmp_path: Path) -> None:
    main = _conf(
        tmp_path, 'unqualified-search-registries = ["a.example"]\n[aliases]\n"x" = "a.example/x"\n'
    )
    drop = _conf(
        tmp_path,
        'unqualified-search-registries = ["b.example"]\n[aliases]\n"y" = "b.example/y"\n',
        "10-drop.conf",
    )
    conf = load_conf([main, drop])
    assert conf.search == ("b.example",)
    assert conf.aliases == {"x": "a.example/x", "y": "b.example/y"}


@pytest.mark.parametrize(
    "text",
    [
        "unqualified-search-registries = [",
        "unqualified-search-registries = [1, 2]",
        "[[registry]]\ninsecure = true\n",
        '[[registry]]\nlocation = "x.example"\ninsecure = "yes"\n',
        "registry = 3\n",
    ],
)
def test_malformed_registries_conf_is_a_one_line_error(tmp_path: Path, text: str) -> None:
    path = _conf(tmp_path, text)
    with pytest.raises(RegistriesConfError) as info:
        load_conf([path])
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_login_writes_an_auth_file_only_its_owner_reads(tmp_path: Path) -> None:
    authfile = tmp_path / "sub" / "auth.json"
    store_credentials("127.0.0.1:5000", Credentials("alice", "s3:cret"), authfile)
    data = json.loads(authfile.read_text())
    assert base64.b64decode(data["auths"]["127.0.0.1:5000"]["auth"]) == b"alice:s3:cret"
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    assert find_credentials("127.0.0.1:5000/team/app", authfile) == Credentials("alice", "s3:cret")
    assert find_credentials("127.0.0.1:5001/team/app", authfile) is None
    assert remove_credentials("127.0.0.1:5000", authfile)
    assert not remove_credentials("127.0.0.1:5000", authfile)
    assert find_credentials("127.0.0.1:5000/team/app", authfile) is None


def test_the_most_specific_auth_entry_wins(tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    store_credentials("r.example", Credentials("any", "1"), authfile)
    store_credentials("r.example/team", Credentials("team", "2"), authfile)
    assert find_credentials("r.example/team/app", authfile) == Credentials("team", "2")
    assert find_credentials("r.example/other/app", authfile) == Credentials("any", "1")


def test_docker_config_is_read_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit file, `docker login`'s credentials work, in docker's spelling."""
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker").mkdir()
    auth = base64.b64encode(b"bob:pw").decode()
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": auth},
                    "r.example:5999": {"auth": auth},
                }
            }
        )
    )
    # read only; as root the default file is /run/containers/0/auth.json, which may exist, so
    # the names asked for are ones it would not hold
    assert find_credentials("r.example:5999/team/app") == Credentials("bob", "pw")
    if os.geteuid() != 0:
        assert find_credentials("docker.io/library/debian") == Credentials("bob", "pw")


@pytest.mark.parametrize(
    "content", [b"{", b"[]", b'{"auths": []}', b'{"auths": {"r.example": {"auth": "!!"}}}']
)
def test_a_malformed_auth_file_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    authfile = tmp_path / "auth.json"
    authfile.write_bytes(content)
    with pytest.raises(AuthFileError) as info:
        find_credentials("r.example/x", authfile)
    assert str(authfile) in str(info.value)


def test_bearer_and_basic_challenges_are_parsed() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert bearer is not None
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None
    assert basic.scheme == "basic"
    assert parse_challenge("Negotiate abc") is None


def test_short_names_are_found_locally_through_search_registries(tmp_path: Path) -> None:
    """`strata run debian` finds `r.example/debian:latest` pulled through a search registry,
    without contacting it (the store alone is read)."""
    from images.store import ImageStore

    store = ImageStore(tmp_path / "state")
    store.ensure()
    raw = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
    with store.lock():
        rec = store.add_image(raw, json.loads(raw), [], ["r.example/debian:latest"])
    conf = load_conf(
        [_conf(tmp_path, 'unqualified-search-registries = ["q.example", "r.example"]\n')]
    )
    found = find_local(store, "debian", conf)
    assert found is not None
    assert found.id == rec.id
    assert find_local(store, "debian", load_conf([_conf(tmp_path, "", "empty.conf")])) is None
