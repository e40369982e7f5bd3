"""Property-based differential test: random lower trees and random operations, strata vs kernel.

Each example draws a small lower tree (at most 12 entries over one or two layers, with OCI
whiteouts and opaque markers) and up to 15 operations (create, write, truncate, chmod, rename with
its flags, link, unlink, mkdir, rmdir) over a handful of names, so that they collide often. It then
runs the scenario on strata and on kernel overlayfs (index=on where supported, EXDEV for directory
renames emulated) exactly as the hand-written table does, and fails on any difference.

strata runs with metacopy=on (its default); the test runs twice, against the kernel's default
copy-up and against the kernel with metacopy=on,redirect_dir=on (where the kernel has it).

Settings: derandomized, 25 examples by default (a fixed set, so CI is deterministic).
    STRATA_HYPOTHESIS_EXAMPLES=500   run more examples
    STRATA_HYPOTHESIS_RANDOM=1       draw new examples each run
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.model.scenarios import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Chmod,
    Create,
    Dir,
    Entry,
    File,
    HardLink,
    Layer,
    Link,
    Mkdir,
    Op,
    Opaque,
    Rename,
    Rmdir,
    Scenario,
    Symlink,
    Truncate,
    Unlink,
    Whiteout,
    Write,
    kernel_supports_metacopy,
    run_differential,
    skip_unless_differential,
)

pytestmark = [pytest.mark.fuse, pytest.mark.root]

EXAMPLES = int(os.environ.get("STRATA_HYPOTHESIS_EXAMPLES", "25"))
RANDOM = os.environ.get("STRATA_HYPOTHESIS_RANDOM", "") not in ("", "0")

# Few names, so that operations collide often. `a` and `b` tend to be directories (they are the
# parents of the deeper paths), `x` and `y` tend to be leaves; any of them can be anything.
PATHS = (b"a", b"b", b"x", b"y", b"a/x", b"a/y", b"a/b", b"b/x", b"b/y", b"a/b/x")
MAX_LOWER_ENTRIES = 12
MAX_OPS = 15

paths = st.sampled_from(PATHS)
fresh_paths = st.sampled_from([b"n", b"a/n", b"b/n", b"x/n"])  # names no lower has
datas = st.sampled_from([b"", b"x", b"hello", b"0123456789"])
modes = st.sampled_from([0o644, 0o600, 0o755, 0o4755])

# The kind of a lower entry, files most often (sampled_from picks evenly and shrinks to "file").
KINDS = ("file", "file", "file", "file", "dir", "dir", "hardlink", "hardlink", "whiteout",
         "whiteout", "symlink", "opaque")  # fmt: skip


@st.composite
def entry_kinds(draw: st.DrawFn) -> tuple[str, object]:
    """(kind, detail) of one lower entry before it is placed in a layer."""
    kind = draw(st.sampled_from(KINDS))
    detail: object = None
    if kind == "file":
        detail = (draw(datas), draw(modes))
    elif kind == "symlink":
        detail = draw(st.sampled_from([*PATHS, b"nowhere"]))
    elif kind == "hardlink":
        detail = draw(st.integers(0, 3))  # to the n-th file of its layer
    return kind, detail


def _ancestors(path: bytes) -> list[bytes]:
    parts = path.split(b"/")
    return [b"/".join(parts[:i]) for i in range(1, len(parts))]


class _LayerBuilder:
    """Places drawn entries into one layer, skipping those that cannot coexist with earlier ones."""

    def __init__(self) -> None:
        self.kinds: dict[bytes, str] = {}  # path -> "dir" | "nondir" (implicit parents are dirs)
        self.files: list[bytes] = []
        self.entries: list[Entry] = []

    def add(self, path: bytes, kind: str, detail: object) -> None:
        if kind == "whiteout":
            if any(self.kinds.get(a) == "nondir" for a in _ancestors(path)):
                return
            self._parents(path)
            self.entries.append(Whiteout(path))
            return
        if path in self.kinds or any(self.kinds.get(a) == "nondir" for a in _ancestors(path)):
            return
        is_dir = kind in ("dir", "opaque")
        if not is_dir and any(p.startswith(path + b"/") for p in self.kinds):
            return
        entry: Entry
        match kind:
            case "file":
                assert isinstance(detail, tuple)
                data, mode = detail
                entry = File(path, data, mode)
                self.files.append(path)
            case "dir":
                entry = Dir(path)
            case "symlink":
                assert isinstance(detail, bytes)
                entry = Symlink(path, detail)
            case "hardlink":
                if not self.files:
                    return
                assert isinstance(detail, int)
                entry = HardLink(path, self.files[detail % len(self.files)])
            case "opaque":
                entry = Opaque(path)
            case _:
                raise AssertionError(kind)
        self._parents(path)
        self.kinds[path] = "dir" if is_dir else "nondir"
        self.entries.append(entry)

    def _parents(self, path: bytes) -> None:
        for a in _ancestors(path):
            self.kinds.setdefault(a, "dir")


@st.composite
def lower_trees(draw: st.DrawFn) -> tuple[Layer, ...]:
    nlayers = draw(st.integers(1, 2))
    drawn = draw(
        st.lists(
            st.tuples(st.integers(0, nlayers - 1), paths, entry_kinds()),
            min_size=3,
            max_size=MAX_LOWER_ENTRIES,
        )
    )
    builders = [_LayerBuilder() for _ in range(nlayers)]
    for layer, path, (kind, detail) in drawn:
        if kind in ("whiteout", "opaque") and layer == nlayers - 1:
            # Markers in the bottom layer hide nothing, and overlayfs does not look for them
            # there: it lists a 0/0 device of a directory that only the bottom layer has.
            kind, detail = "dir", None
        builders[layer].add(path, kind, detail)
    layers = [b.entries for b in builders]
    if nlayers == 2:
        layers[0] = _whiteouts_in_merged_dirs_only(layers[0], builders[1])
    return tuple(tuple(entries) for entries in layers)


def _whiteouts_in_merged_dirs_only(top: list[Entry], base: _LayerBuilder) -> list[Entry]:
    """Drop whiteouts of `top` whose directory is not merged with the base layer.

    overlayfs lists a directory that only one layer has (or that is opaque) straight from that
    layer, 0/0 devices included (`ls` shows them, `stat` says ENOENT); it expects whiteouts only
    where something below is hidden. strata hides them everywhere. Not a case worth comparing.
    """
    hiding = {e.path for e in top if isinstance(e, Opaque | Whiteout)}
    base_dirs = {p for p, kind in base.kinds.items() if kind == "dir"}

    def merged(ancestors: list[bytes]) -> bool:
        return all(a in base_dirs and a not in hiding for a in ancestors)

    return [e for e in top if not isinstance(e, Whiteout) or merged(_ancestors(e.path))]


def operations(
    names: st.SearchStrategy[bytes], files: st.SearchStrategy[bytes]
) -> st.SearchStrategy[Op]:
    """Operations on `names`; those that need a file draw from `files`, new names often fresh."""
    new = st.one_of(names, fresh_paths)
    return st.one_of(
        st.builds(Create, new, datas, excl=st.booleans()),
        st.builds(Write, files, datas.filter(bool), offset=st.sampled_from([0, 3])),
        st.builds(Truncate, files, st.sampled_from([0, 2, 10])),
        st.builds(Chmod, names, modes),
        st.builds(Rename, names, new, flags=st.sampled_from(RENAME_FLAGS)),
        st.builds(Rename, files, new, flags=st.sampled_from(RENAME_FLAGS)),
        st.builds(Link, files, new),
        st.builds(Unlink, files),
        st.builds(Mkdir, new),
        st.builds(Rmdir, names),
    )


RENAME_FLAGS = (0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE)


def _paths_in(lowers: tuple[Layer, ...]) -> tuple[list[bytes], list[bytes]]:
    """All paths the lowers have (directories implied included), and those of files."""
    found, files = set(), set()
    for layer in lowers:
        for entry in layer:
            if not isinstance(entry, Whiteout):
                found.add(entry.path)
            if isinstance(entry, File | HardLink):
                files.add(entry.path)
            found.update(_ancestors(entry.path))
    return sorted(found), sorted(files)


def _biased(preferred: list[bytes], weight: int) -> st.SearchStrategy[bytes]:
    """Any path, but one of `preferred` `weight` times as often."""
    if not preferred:
        return paths
    return st.one_of(*[st.sampled_from(preferred)] * weight, paths)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A lower tree, then operations on names half of which the lowers have (so fewer ENOENT)."""
    lowers = draw(lower_trees())
    in_lowers, files = _paths_in(lowers)
    ops = draw(
        st.lists(operations(_biased(in_lowers, 1), _biased(files, 3)), min_size=1, max_size=MAX_OPS)
    )
    return Scenario(name="generated", lowers=lowers, ops=tuple(ops), check_expected=False)


def describe(scenario: Scenario) -> str:
    """The scenario as text, to paste into the hand-written table when an example fails."""
    lines = ["lowers (top first):"]
    for i, layer in enumerate(scenario.lowers):
        lines.append(f"  layer {i}: " + ", ".join(repr(e) for e in layer))
    lines.append("ops:")
    lines += [f"  {i}: {op.show()}    # {op!r}" for i, op in enumerate(scenario.ops)]
    return "\n".join(lines)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,  # print_blob gives the @reproduce_failure line instead
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@pytest.mark.parametrize("kernel_metacopy", [False, True], ids=["kernel", "kernel-metacopy"])
@given(scenario=scenarios())
def test_random_operations_match_kernel_overlayfs(
    tmp_path: Path, kernel_metacopy: bool, scenario: Scenario
) -> None:
    skip_unless_differential()
    if kernel_metacopy and not kernel_supports_metacopy():
        pytest.skip("kernel overlayfs here cannot mount with metacopy=on,redirect_dir=on")
    note(describe(scenario))
    base = Path(tempfile.mkdtemp(prefix="example-", dir=tmp_path))
    try:
        problems = run_differential(scenario, base, kernel_metacopy=kernel_metacopy)
        # An AssertionError, not pytest.fail(): Hypothesis then adds the falsifying example and
        # its @reproduce_failure line to the report.
        assert not problems, describe(scenario) + "\n\n" + "\n\n".join(problems)
    finally:
        shutil.rmtree(base, ignore_errors=True)
