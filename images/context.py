"""The build context: `.dockerignore` patterns, COPY/ADD source selection, and the content hash
the build cache keys COPY/ADD steps with.

`.dockerignore` follows Docker's rules (moby/patternmatcher): one pattern a line, `#` comments,
surrounding blanks trimmed, each pattern cleaned (`./`, `//`, trailing `/` and `..` removed, a
leading `/` dropped); `*` and `?` never match `/`, `**` matches any number of directories
(also none), `[...]` is a class, `\\` escapes; a pattern that matches a parent directory matches
everything below it; `!pattern` re-includes; the last matching pattern wins. The Dockerfile and
`.dockerignore` themselves are read even when ignored, as Docker does, but cannot be copied.

Paths here are context-relative `str`s with `/` separators (the context is a host directory
given on the command line; its file names are decoded with the filesystem encoding, which keeps
undecodable bytes as surrogates, so no name is lost).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import xxhash

_GLOB_CHARS: Final = frozenset("*?[")


class ContextError(Exception):
    """A COPY/ADD source that is not in the context (or is excluded, or escapes it)."""


def clean(path: str) -> str:
    """Go's `filepath.Clean` for relative context paths ('.' for the root)."""
    return posixpath.normpath(path.lstrip("/") or ".").lstrip("/") or "."


def _compile(pattern: str) -> re.Pattern[str]:
    """A Docker ignore pattern (or COPY glob) as an anchored regular expression."""
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 2
                if pattern[i : i + 1] == "/":
                    i += 1
                out += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "^") else i + 1)
            if end < 0:
                out += re.escape(ch)
            else:
                body = pattern[i + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Pattern:
    regex: re.Pattern[str]
    exclusion: bool


class IgnoreRules:
    """The patterns of a `.dockerignore` (see the module doc)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.patterns: list[_Pattern] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            if not line:
                continue
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
            self.patterns.append(_Pattern(_compile(line), exclusion))

    @classmethod
    def read(cls, context: Path) -> IgnoreRules:
        try:
            text = (context / ".dockerignore").read_text(errors="surrogateescape")
        except FileNotFoundError:
            return cls(())
        return cls(text.splitlines())

    def excluded(self, path: str) -> bool:
        """Whether the context path `path` is left out of the context."""
        parents = path.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            hit = bool(pattern.regex.match(path))
            if not hit:
                hit = any(
                    pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
                )
            if hit:
                matched = not pattern.exclusion
        return matched


def xattrs(path: Path) -> dict[str, bytes]:
    """The extended attributes a copy of `path` keeps (file capabilities, `user.*`, ...): all
    but the union's own (overlay and strata markers), as commit's changeset leaves them out."""
    from unionfs.whiteout import is_private_xattr

    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without xattrs
        return {}
    out = {}
    for name in sorted(names):
        if is_private_xattr(name):
            continue
        with contextlib.suppress(OSError):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


class Context:
    """A build context directory and what of it `.dockerignore` leaves in."""

    keeps_owner = False  # COPY makes context files root's (or --chown's)

    def __init__(self, root: Path, rules: IgnoreRules | None = None) -> None:
        self.root = root
        self.rules = rules if rules is not None else IgnoreRules.read(root)
        self._paths: list[str] | None = None

    def paths(self) -> list[str]:
        """Every context path not excluded (directories too when anything below is kept)."""
        if self._paths is None:
            kept: list[str] = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, self.root)
                for name in sorted(filenames) + [d for d in dirnames if self._is_link(dirpath, d)]:
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if not self.rules.excluded(rel):
                        kept.append(rel)
                for name in dirnames:
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if not self._is_link(dirpath, name) and not self.rules.excluded(rel):
                        kept.append(rel)
            # a directory whose contents were re-included (`!dir/keep`) is kept for them
            have = set(kept)
            for rel in list(kept):
                parent = posixpath.dirname(rel)
                while parent and parent not in have:
                    have.add(parent)
                    kept.append(parent)
                    parent = posixpath.dirname(parent)
            self._paths = sorted(kept)
        return self._paths

    @staticmethod
    def _is_link(dirpath: str, name: str) -> bool:
        return os.path.islink(os.path.join(dirpath, name))

    def select(self, source: str) -> list[str]:
        """The context paths a COPY/ADD source names: a path, or a glob (at least one match)."""
        rel = posixpath.normpath(source.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            raise ContextError(f"{source}: outside the build context")
        rel = rel.lstrip("/") or "."
        if rel == ".":
            return ["."]
        if _GLOB_CHARS.intersection(rel):
            regex = _compile(rel)
            found = [p for p in self.paths() if regex.match(p)]
            if not found:
                raise ContextError(f"{source}: no file in the build context matches")
            return found
        if rel not in set(self.paths()):
            raise ContextError(
                f"{source}: not found in the build context (or excluded by .dockerignore)"
            )
        return [rel]

    def below(self, rel: str) -> list[str]:
        """The kept context paths strictly below the directory `rel` ('.' for all)."""
        if rel == ".":
            return list(self.paths())
        prefix = rel + "/"
        return [p for p in self.paths() if p.startswith(prefix)]

    def host(self, rel: str) -> Path:
        return self.root if rel == "." else self.root / rel

    def digest(self, selected: Iterable[str]) -> str:
        """xxh3-128 of the names, types, modes, owners, link targets, contents, extended
        attributes and hard links (which earlier path each is a link of) of the selected
        paths and everything kept below them: the cache key of a COPY/ADD step."""
        h = xxhash.xxh3_128()
        first: dict[tuple[int, int], str] = {}
        for rel in _with_contents(self, selected):
            path = self.host(rel)
            st = os.lstat(path)
            h.update(os.fsencode(rel) + b"\0")
            h.update(f"{st.st_mode:o} {st.st_uid} {st.st_gid}\0".encode())
            for name, value in xattrs(path).items():
                h.update(f"xattr {name} {len(value)}\0".encode() + value)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                linked = first.setdefault((st.st_dev, st.st_ino), rel)
                h.update(b"link " + os.fsencode(linked) + b"\0")
            if stat.S_ISLNK(st.st_mode):
                h.update(os.fsencode(os.readlink(path)) + b"\0")
            elif stat.S_ISREG(st.st_mode):
                h.update(f"{st.st_size}\0".encode())
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
        return h.hexdigest()


def parents_path(source: str, rel: str) -> str:
    """COPY --parents: where the path `rel` that the source word `source` selected lands
    below DEST: all of it, or, when the source has a pivot `/./` (`x/./y/*.txt`), what
    follows the pivot (as BuildKit)."""
    head, pivot, _ = source.lstrip("/").partition("/./")
    if not pivot:
        return rel
    base = clean(head)
    if base == ".":
        return rel
    parts = rel.split("/")
    depth = len(base.split("/"))
    if not _compile(base).match("/".join(parts[:depth])):
        return rel
    return "/".join(parts[depth:]) or "."


def _with_contents(context: Context, selected: Iterable[str]) -> Iterator[str]:
    for rel in selected:
        yield rel
        if os.path.isdir(context.host(rel)) and not os.path.islink(context.host(rel)):
            yield from context.below(rel)


class StageRoot:
    """The root of a built stage or an image, mounted, as the source of `COPY --from`.

    A source path is resolved in the root as in a container (`runtime.mounts.resolve_in_root`:
    symlinks followed, never out of the root), so a link named as a source copies what it
    leads to, under the link's name; links inside a copied directory stay links. Globs match
    any component. Files keep their owners, modes and times, as buildah's COPY --from does."""

    keeps_owner = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self._hosts: dict[str, Path] = {}

    def select(self, source: str) -> list[str]:
        from runtime.mounts import resolve_in_root

        parts = [p for p in source.split("/") if p not in ("", ".")]
        found = [""]
        for i, part in enumerate(parts):
            if not _GLOB_CHARS.intersection(part):
                found = [f"{rel}/{part}" if rel else part for rel in found]
                continue
            regex = _compile(part)
            matched = []
            for rel in found:
                where = resolve_in_root(self.root, rel)
                if where.is_dir():
                    names = sorted(n for n in os.listdir(where) if regex.match(n))
                    matched += [f"{rel}/{n}" if rel else n for n in names]
            if not matched:
                raise ContextError(f"{source}: nothing matches")
            found = matched
            if i + 1 < len(parts):  # a glob in the middle: keep only directories
                found = [rel for rel in found if resolve_in_root(self.root, rel).is_dir()]
        rels = []
        for rel in found:
            host = resolve_in_root(self.root, rel or "/")
            if not os.path.lexists(host):
                raise ContextError(f"{source}: no such file or directory")
            rel = rel or "."
            self._hosts[rel] = host
            rels.append(rel)
        return rels

    def host(self, rel: str) -> Path:
        """Where a selected path (or one below it) is; another path of the root (a parent
        that COPY --parents copies) resolved as in a container."""
        from runtime.mounts import resolve_in_root

        found = self._hosts.get(rel)
        return found if found is not None else resolve_in_root(self.root, rel)

    def below(self, rel: str) -> list[str]:
        top = self._hosts[rel]
        out = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            sub = os.path.relpath(dirpath, top)
            for name in sorted([*filenames, *dirnames]):
                child = name if sub == "." else f"{sub}/{name}"
                path = f"{child}" if rel == "." else f"{rel}/{child}"
                self._hosts[path] = Path(dirpath, name)
                out.append(path)
        return sorted(out)
