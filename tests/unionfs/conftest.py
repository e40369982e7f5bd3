"""Fixtures of the union core tests: layers in a temp dir, and a `union` factory that checks the
layer invariants after each test (see helpers.py).

Tests run as any user; a test that needs root (chown to other ids, trusted.* xattrs, 0/0 character
devices) is marked `@pytest.mark.root` and skipped, with a reason, without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mounts import skip_unless_root
from tests.unionfs.helpers import Layers, UnionFactory, check_invariants


@pytest.fixture(autouse=True)
def _skip_root_tests_without_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") is not None:
        skip_unless_root()


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    lowers = [tmp_path / f"lower{i}" for i in range(3)]
    for d in (*lowers, tmp_path / "upper", tmp_path / "work"):
        d.mkdir()
    return Layers(lowers=lowers, upper=tmp_path / "upper", work=tmp_path / "work")


@pytest.fixture
def union(layers: Layers) -> Iterator[UnionFactory]:
    factory = UnionFactory(layers)
    try:
        yield factory
    finally:
        factory.close_all()
    check_invariants(factory)


@pytest.fixture
def lower0(layers: Layers) -> Path:
    return layers.lowers[0]


@pytest.fixture
def lower1(layers: Layers) -> Path:
    return layers.lowers[1]


@pytest.fixture
def upper(layers: Layers) -> Path:
    return layers.upper
