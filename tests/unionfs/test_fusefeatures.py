"""Each pyfuse3 feature is probed on its own, by the name its hunk of the patch adds."""

from __future__ import annotations

import importlib.metadata
import types

import pytest

from unionfs import fusefeatures


class _StockFileInfo:
    def __init__(self) -> None:
        self.fh = 0


class _PatchedFileInfo(_StockFileInfo):
    def __init__(self) -> None:
        super().__init__()
        self.cache_readdir = False
        self.backing_id = 0


def _stock() -> types.ModuleType:
    module = types.ModuleType("pyfuse3")
    module.FileInfo = _StockFileInfo  # type: ignore[attr-defined]
    return module


def test_stock_pyfuse3_has_no_feature() -> None:
    features = fusefeatures.probe(_stock())
    assert features == fusefeatures.FuseFeatures()
    assert not features.patched
    assert features.describe() == "stock"


def test_the_whole_patch_has_every_feature() -> None:
    module = _stock()
    module.FileInfo = _PatchedFileInfo  # type: ignore[attr-defined]
    module.STRATA_FEATURES = frozenset(  # type: ignore[attr-defined]
        {"no_opendir", "no_open", "nonblocking_loop"}
    )
    module.FUSE_CAPS = {"DONT_MASK": 1 << 9, "PASSTHROUGH": 1 << 29}  # type: ignore[attr-defined]
    module.set_spin = lambda microseconds: None  # type: ignore[attr-defined]
    module.backing_open = lambda fd: 1  # type: ignore[attr-defined]
    features = fusefeatures.probe(module)
    assert features.patched
    assert features.describe() == (
        "no_opendir, cache_readdir, fuse_caps, no_open, nonblocking_loop, spin, passthrough"
    )
    assert dict(features.fuse_caps) == {"DONT_MASK": 1 << 9, "PASSTHROUGH": 1 << 29}


@pytest.mark.parametrize(
    ("name", "value", "feature"),
    [
        ("set_spin", lambda microseconds: None, "spin"),
        ("STRATA_FEATURES", frozenset({"no_open"}), "no_open"),
        ("STRATA_FEATURES", frozenset({"no_opendir"}), "no_opendir"),
        ("FUSE_CAPS", {"CACHE_SYMLINKS": 1 << 23}, "fuse_caps"),
    ],
)
def test_one_hunk_gives_only_its_own_feature(name: str, value: object, feature: str) -> None:
    """A pyfuse3 that ships one of the hunks (upstream, one day) is used for just that."""
    module = _stock()
    setattr(module, name, value)
    features = fusefeatures.probe(module)
    assert features.describe() == feature


def test_the_probed_features_cannot_change() -> None:
    features = fusefeatures.probe(_stock())
    with pytest.raises(AttributeError):
        features.no_open = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        features.fuse_caps["DONT_MASK"] = 1  # type: ignore[index]


def test_the_patched_build_has_every_feature() -> None:
    """A rebuilt patch that lost a hunk or its marker would turn a feature off without a word
    (its tests skip), so the build scripts/setup.sh makes must show all of them."""
    version = importlib.metadata.version("pyfuse3")
    if "+strata" not in version:
        pytest.skip(f"pyfuse3 {version} is not the patched build (scripts/setup.sh)")
    from unionfs.ops import FEATURES

    assert FEATURES.describe() == (
        "no_opendir, cache_readdir, fuse_caps, no_open, nonblocking_loop, spin, passthrough"
    )
