"""Which images `strata images` lists, and under which names: docker's `--filter` keys
(dangling, label, reference, before, since), `-a`, and `images [REPOSITORY[:TAG]]`.

As docker's: without `-a` an untagged image that another image is built on (an intermediate
image of a build) is left out; `dangling=true` keeps only untagged images that no image is
built on; `reference=PATTERN` keeps the names that match (path.Match globs: `*` and `?` stop at
`/`), against the whole `repo:tag`, the repository, and both without strata's default
`localhost/` (docker's "familiar" names: `busybox` for `localhost/busybox:latest`); `before=`
and `since=` compare creation times with the named image's. With `-a`, an intermediate image
counts as dangling too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from unionfs.errors import UsageError

if TYPE_CHECKING:
    from .store import ImageRecord, ImageStore

FILTERS: Final = ("dangling", "label", "reference", "before", "since")
NONE: Final = "<none>:<none>"


def parse_filters(items: Sequence[str]) -> list[tuple[str, str]]:
    """`--filter K=V` items (one line and 125 for a bad one, as docker's daemon refuses it)."""
    found = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"bad format of filter {item!r} (expected name=value)", 125)
        if key not in FILTERS:
            raise UsageError(f"invalid filter {key!r} ({', '.join(FILTERS)})", 125)
        if key == "dangling" and value.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"invalid filter 'dangling={value}': true or false", 125)
        if key == "reference":
            _glob(value)  # (a bad pattern fails here)
        found.append((key, value))
    return found


def _glob(pattern: str) -> re.Pattern[str]:
    """Go's path.Match pattern as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise UsageError(f"invalid reference pattern {pattern!r}: syntax error", 125)
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out))
    except re.error:
        raise UsageError(f"invalid reference pattern {pattern!r}: syntax error", 125) from None


def _names(tag: str) -> list[str]:
    """What a reference pattern is matched against (see the module doc)."""
    repo = tag.rpartition(":")[0]
    names = [tag, repo]
    for prefix in ("localhost/", "docker.io/library/", "docker.io/"):
        if tag.startswith(prefix):
            names += [tag.removeprefix(prefix), repo.removeprefix(prefix)]
    return names


def _history_key(rec: ImageRecord) -> tuple[tuple[str, ...], list[object]]:
    history = rec.config.get("history") or []
    assert isinstance(history, list)
    return rec.layers, history


def _has_children(rec: ImageRecord, records: Sequence[ImageRecord]) -> bool:
    """Whether another image is built on this one (its layers and history go on from them)."""
    layers, history = _history_key(rec)
    for other in records:
        if other.id == rec.id:
            continue
        o_layers, o_history = _history_key(other)
        if (
            len(o_history) > len(history)
            and o_layers[: len(layers)] == layers
            and json.dumps(o_history[: len(history)]) == json.dumps(history)
        ):
            return True
    return False


def select(
    store: ImageStore,
    records: Sequence[ImageRecord],
    filters: Sequence[tuple[str, str]],
    *,
    show_all: bool,
) -> list[tuple[ImageRecord, tuple[str, ...]]]:
    """Each image listed, with the names to list it under (NONE for an untagged one)."""
    from runtime.logshow import parse_rfc3339

    def created(rec: ImageRecord) -> int:
        try:
            return parse_rfc3339(rec.created)
        except (ValueError, OverflowError):
            return 0

    bounds = {
        key: created(store.get(value)) for key, value in filters if key in ("before", "since")
    }
    patterns = [_glob(value) for key, value in filters if key == "reference"]
    listed = []
    for rec in records:
        config = rec.config.get("config") or {}
        labels = (config.get("Labels") if isinstance(config, dict) else None) or {}
        assert isinstance(labels, dict)
        tags = tuple(rec.tags)
        wants = [v.lower() in ("true", "1") for k, v in filters if k == "dangling"]
        if wants and any(want != (not tags) for want in wants):
            continue
        if wants and wants[0] and not show_all and _has_children(rec, records):
            continue  # (with -a an intermediate image is dangling too)
        if not tags and not show_all and not wants and _has_children(rec, records):
            continue  # an intermediate image
        if not all(
            label in labels and (not eq or labels[label] == value)
            for key, item in filters
            if key == "label"
            for label, eq, value in [item.partition("=")]
        ):
            continue
        when = created(rec)
        if "before" in bounds and not when < bounds["before"]:
            continue
        if "since" in bounds and not when > bounds["since"]:
            continue
        if patterns:
            tags = tuple(
                t for t in tags if any(p.fullmatch(n) for p in patterns for n in _names(t))
            )
            if not tags:
                continue
        listed.append((rec, tags or (NONE,)))
    return listed


__all__ = ["FILTERS", "NONE", "parse_filters", "select"]
