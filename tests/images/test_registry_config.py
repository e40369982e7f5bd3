"""registries.conf end to end: a `[[registry]]` prefix served from another location, its mirror
tried first and skipped when it fails, and a blocked registry never contacted."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.registry import FaultProxy
from tests.runtime.conftest import Strata

from .registry_fixtures import (
    IMAGE_ID,
    REPO,
    StoreState,
    assert_failed_cleanly,
    client,
    proxy,
    registry,
)

__all__ = ["client", "proxy", "registry"]  # fixtures, used by name

FAST = ("--retry", "0")


def _conf(client: Strata, text: str) -> None:
    path = Path(client.env["CONTAINERS_REGISTRIES_CONF"])
    path.write_text(text)


def test_a_prefix_is_pulled_from_its_mirror_first(client: Strata, proxy: FaultProxy) -> None:
    """`team.example/uniontest:1` (a name no resolver is ever asked about) is served by the
    location the table gives; its mirror (the proxy) answers first."""
    reg = proxy.registry
    _conf(
        client,
        f'[[registry]]\nprefix = "team.example"\nlocation = "{reg.host}"\n'
        f'[[registry.mirror]]\nlocation = "{proxy.host}"\n',
    )
    done = client.run("pull", "-q", *FAST, f"team.example/{REPO}:1")
    assert done.stdout == f"{IMAGE_ID}\n", done.stderr
    assert proxy.requests("GET", "/manifests/")  # the mirror served it
    images = client.run("images", "--format", "json", check=True).stdout
    assert "team.example/uniontest" in images  # stored under the name asked for


def test_a_failing_mirror_falls_back_to_the_location(client: Strata, proxy: FaultProxy) -> None:
    reg = proxy.registry
    proxy.fail(r".", 503)
    _conf(
        client,
        f'[[registry]]\nprefix = "team.example"\nlocation = "{reg.host}"\n'
        f'[[registry.mirror]]\nlocation = "{proxy.host}"\n',
    )
    reg.settle()
    before = len(reg.manifest_gets())
    done = client.run("pull", "-q", *FAST, f"team.example/{REPO}:1")
    assert done.stdout == f"{IMAGE_ID}\n", done.stderr
    assert proxy.requests()  # tried first
    reg.settle()
    assert len(reg.manifest_gets()) > before  # then the location itself


def test_a_blocked_registry_is_never_contacted(client: Strata, proxy: FaultProxy) -> None:
    _conf(client, f'[[registry]]\nlocation = "{proxy.host}"\nblocked = true\n')
    before = StoreState.of(client.root)
    done = client.run("pull", "-q", *FAST, f"{proxy.host}/{REPO}:1")
    line = assert_failed_cleanly(done, client.root, before)
    assert "blocked" in line
    assert proxy.requests() == []
