"""The build context: `.dockerignore` semantics, COPY source selection, the cache digest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from images.context import Context, ContextError, IgnoreRules


def _rules(*lines: str) -> IgnoreRules:
    return IgnoreRules(lines)


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.log"], "a.log", True),
        (["*.log"], "dir/a.log", False),  # * does not cross /
        (["**/*.log"], "dir/sub/a.log", True),
        (["**/*.log"], "a.log", True),  # ** matches no directory too
        (["dir"], "dir/sub/file", True),  # a matched parent excludes what is below
        (["dir/"], "dir/file", True),  # cleaned: trailing slash dropped
        (["/dir"], "dir/file", True),  # leading slash dropped
        (["./dir//x"], "dir/x", True),
        (["dir/**"], "dir/a/b", True),
        (["dir/**"], "dir", False),
        (["a?c"], "abc", True),
        (["a?c"], "a/c", False),
        (["[a-c]x"], "bx", True),
        (["[!a-c]x"], "bx", False),
        (["[!a-c]x"], "dx", True),
        (["# comment", ""], "# comment", False),
        (["*", "!keep"], "keep", False),
        (["*", "!keep"], "other", True),
        (["*", "!keep", "keep"], "keep", True),  # the last match wins
        (["dir", "!dir/keep"], "dir/keep", False),
        (["dir", "!dir/keep"], "dir/other", True),
        (["  spaced.txt  "], "spaced.txt", True),
        (["\\*star"], "*star", True),
        (["\\*star"], "xstar", False),
    ],
)
def test_dockerignore_patterns(patterns: list[str], path: str, excluded: bool) -> None:
    assert _rules(*patterns).excluded(path) is excluded


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_context_paths_honour_dockerignore_with_exceptions(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "a.txt": "a",
            "b.log": "b",
            "dir/keep": "k",
            "dir/drop": "d",
            "dir/deep/x.log": "x",
            ".dockerignore": "*.log\ndir\n!dir/keep\n**/*.log\n",
        },
    )
    ctx = Context(tmp_path)
    assert ctx.paths() == [".dockerignore", "a.txt", "dir", "dir/keep"]
    assert ctx.select("dir") == ["dir"]
    assert ctx.below("dir") == ["dir/keep"]
    assert ctx.select("*.txt") == ["a.txt"]
    assert ctx.select("/a.txt") == ["a.txt"]
    assert ctx.select(".") == ["."]
    with pytest.raises(ContextError, match="excluded"):
        ctx.select("b.log")
    with pytest.raises(ContextError, match="no file"):
        ctx.select("*.md")
    with pytest.raises(ContextError, match="outside"):
        ctx.select("../etc/passwd")


def test_symlinks_are_listed_not_followed(tmp_path: Path) -> None:
    _tree(tmp_path, {"real/f": "f"})
    os.symlink("real", tmp_path / "link")
    ctx = Context(tmp_path)
    assert ctx.paths() == ["link", "real", "real/f"]
    assert ctx.below("link") == []


def test_digest_changes_with_content_mode_and_names(tmp_path: Path) -> None:
    _tree(tmp_path, {"d/a": "one", "d/b": "two", "other": "o"})
    ctx = Context(tmp_path)
    first = ctx.digest(["d"])
    assert Context(tmp_path).digest(["d"]) == first
    (tmp_path / "other").write_text("changed")  # not selected
    assert Context(tmp_path).digest(["d"]) == first
    (tmp_path / "d/a").write_text("ONE")
    second = Context(tmp_path).digest(["d"])
    assert second != first
    os.chmod(tmp_path / "d/a", 0o600)
    third = Context(tmp_path).digest(["d"])
    assert third != second
    os.rename(tmp_path / "d/b", tmp_path / "d/c")
    assert Context(tmp_path).digest(["d"]) != third
