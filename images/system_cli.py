"""`strata system df`, `strata system prune` and `strata container prune`: what a state root
holds and the removal of what nothing uses, across containers, networks, volumes, images and
the build cache, as docker's commands of those names show and do. They belong to the image
store's layer because they need both the store and the runtime.

Sizes are docker's: an image's is its layers' (each layer counted once over all images), a
container's is its writable layer, a volume's its `_data`; the build cache is the layers only
build cache entries name and the directories of `RUN --mount=type=cache` (docker counts both as
its "Build Cache"). Numbers are printed with go-units' HumanSize, as docker prints them.

`strata builder prune` is docker's: the build cache alone (entries, the layers only they name,
and cache mounts no RUN uses at the moment).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from runtime.cli import add_root, root_path
from unionfs.command import Runner, Subcommand

if TYPE_CHECKING:
    from runtime.state import ContainerDir, StateRoot

    from .store import ImageStore


def _dir_size(path: Path) -> int:
    from .store import layer_size

    try:
        return layer_size(path)
    except OSError:
        return 0


def _cache_layers(store: ImageStore) -> tuple[int, set[str]]:
    """The number of build cache entries and the layers they name."""
    from runtime.state import read_json

    count, layers = 0, set[str]()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(store.cache_dir):
            count += 1
            with contextlib.suppress(OSError, ValueError):
                named = read_json(store.cache_dir / name).get("layers") or []
                if isinstance(named, list):
                    layers.update(str(d) for d in named)
    return count, layers


def _cache_mounts(store: ImageStore) -> list[Path]:
    """The directories of `RUN --mount=type=cache` (images.build makes them)."""
    where = store.path / "build-mounts"
    try:
        names = sorted(os.listdir(where))
    except FileNotFoundError:
        return []
    return [where / name for name in names if not name.startswith(".")]


def _drop_cache_mounts(store: ImageStore) -> tuple[list[str], int]:
    """Remove the cache mounts no RUN uses: their names and the bytes they held. Each is
    renamed aside while flock(2)ed (a build then makes a new one) and removed after."""
    import fcntl

    from runtime.state import remove_tree

    dropped, freed = [], 0
    for mount in _cache_mounts(store):
        try:
            fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        aside = mount.with_name(f".pruned-{mount.name}-{os.getpid()}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(mount, aside)
        except (BlockingIOError, FileNotFoundError):
            continue  # in use by a RUN, or pruned meanwhile
        finally:
            os.close(fd)
        size = _dir_size(aside)
        remove_tree(aside)
        dropped.append(mount.name)
        freed += size
    return dropped, freed


def _writable_size(cdir: ContainerDir) -> int:
    return _dir_size(cdir.sub("upper"))


def _share(part: int, whole: int) -> str:
    from runtime.volume_cli import human_size

    return f"{human_size(part)} ({round(100 * part / whole) if whole else 0}%)"


def _add_df(parser: argparse.ArgumentParser) -> None:
    add_root(parser)


def _run_df(args: argparse.Namespace, runner: Runner) -> int:
    from runtime import volumes
    from runtime.state import RUNNING, StateRoot
    from runtime.volume_cli import human_size

    from .store import ImageStore

    root = StateRoot(root_path(args))
    store = ImageStore(root.path)
    images = store.images() if store.path.is_dir() else []
    containers = root.containers()
    sizes = {d: _dir_size(store.layer_path(d)) for rec in images for d in rec.layers}
    active_images = [rec for rec in images if store.containers_using(rec)]
    active_layers = {d for rec in active_images for d in rec.layers}
    image_size = sum(sizes.values())
    image_free = sum(size for d, size in sizes.items() if d not in active_layers)
    uppers = {c.id: _writable_size(c) for c in containers}
    running = [c for c in containers if c.effective_state().status == RUNNING]
    container_size = sum(uppers.values())
    container_free = container_size - sum(uppers[c.id] for c in running)
    vols = volumes.all_volumes(root)
    used = {v.name for c in containers for v in c.config.volumes if v.kind == volumes.VOLUME}
    vol_sizes = {v.name: volumes.disk_usage(v.data) for v in vols}
    vol_size = sum(vol_sizes.values())
    vol_free = sum(size for name, size in vol_sizes.items() if name not in used)
    entries, cache_layers = _cache_layers(store) if store.path.is_dir() else (0, set())
    cache_size = sum(
        _dir_size(store.layer_path(d)) for d in cache_layers - set(sizes) if store.has_layer(d)
    )
    mounts = _cache_mounts(store)
    mount_sizes = {m: _dir_size(m) for m in mounts}
    from .store import locked

    busy = [m for m in mounts if locked(m)]
    cache_free = cache_size + sum(size for m, size in mount_sizes.items() if m not in busy)
    cache_size += sum(mount_sizes.values())
    entries += len(mounts)
    rows = [
        ("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"),
        ("Images", str(len(images)), str(len(active_images)), human_size(image_size),
         _share(image_free, image_size)),
        ("Containers", str(len(containers)), str(len(running)), human_size(container_size),
         _share(container_free, container_size)),
        ("Local Volumes", str(len(vols)), str(len(used & set(vol_sizes))), human_size(vol_size),
         _share(vol_free, vol_size)),
        ("Build Cache", str(entries), str(len(busy)), human_size(cache_size),
         human_size(cache_free)),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _report(sections: list[tuple[str, list[str]]], freed: int) -> None:
    """A prune's output as docker prints it: each non-empty section under its title, then the
    total."""
    from runtime.volume_cli import human_size

    for title, lines in sections:
        if lines:
            print(title)
            for line in lines:
                print(line)
            print()
    print(f"Total reclaimed space: {human_size(freed)}", flush=True)


def _add_prune(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument(
        "-a", "--all", action="store_true", help="every image no container uses, not only untagged"
    )
    parser.add_argument(
        "--volumes", action="store_true", help="also the anonymous volumes no container uses"
    )
    parser.add_argument("-f", "--force", action="store_true", help="do not ask (strata never asks)")


def prune_containers(root: StateRoot) -> tuple[list[str], int]:
    """Remove every container that is not running (created or exited): their ids, and the
    bytes their writable layers held."""
    from runtime.lifecycle import remove
    from runtime.state import RUNNING

    removed, freed = [], 0
    for cdir in root.containers():
        if cdir.effective_state().status == RUNNING:
            continue
        size = _writable_size(cdir)
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another command
            remove(root, cdir, force=False)
            removed.append(cdir.id)
            freed += size
    return removed, freed


def _prune_images(store: ImageStore, *, all_unused: bool) -> list[str]:
    """Untagged images no container uses (`all_unused`: every image none uses), docker's
    `image prune [-a]`; the lines `rmi` prints."""
    lines = []
    for rec in store.images():
        if (rec.tags and not all_unused) or store.containers_using(rec):
            continue
        lines += [line.lower() for line in store.remove(rec.id, force=False)]
    return lines


def _drop_build_cache(store: ImageStore) -> list[str]:
    """Every build cache entry (an unchanged rebuild then runs its steps again)."""
    dropped = []
    with store.lock(), contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(store.cache_dir)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store.cache_dir / name)
                dropped.append(name.removesuffix(".json"))
    return dropped


def _run_prune(args: argparse.Namespace, runner: Runner) -> int:
    from runtime import volumes
    from runtime.cli import prune_networks
    from runtime.namespaces import enter_rootless
    from runtime.state import StateRoot

    from .store import ImageStore

    root = StateRoot(root_path(args))
    containers, freed = prune_containers(root)
    sections: list[tuple[str, list[str]]] = [("Deleted Containers:", containers)]
    sections.append(("Deleted Networks:", prune_networks(root)))
    if args.volumes:
        pruned = volumes.prune(root, all_unused=False)
        sections.append(("Deleted Volumes:", [name for name, _ in pruned]))
        freed += sum(size for _, size in pruned)
    enter_rootless()  # layers of subordinate ids are removable only in the user's namespace
    store = ImageStore(root.path)
    if store.path.is_dir():
        before = _dir_size(store.layers_dir)
        sections.append(("Deleted Images:", _prune_images(store, all_unused=args.all)))
        mounts, mounts_freed = _drop_cache_mounts(store)
        sections.append(("Deleted build cache objects:", _drop_build_cache(store) + mounts))
        store.prune()  # the layers only those named
        freed += max(0, before - _dir_size(store.layers_dir)) + mounts_freed
    _report(sections, freed)
    return 0


def _add_builder_prune(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="all build cache (strata keeps no other kind: the same as without)",
    )
    parser.add_argument("-f", "--force", action="store_true", help="do not ask (strata never asks)")


def _run_builder_prune(args: argparse.Namespace, runner: Runner) -> int:
    """docker's `builder prune`: the build cache entries, the layers only they named, and the
    cache mounts no RUN uses now."""
    from runtime.namespaces import enter_rootless
    from runtime.state import StateRoot

    from .store import ImageStore

    root = StateRoot(root_path(args))
    enter_rootless()  # layers and cache mounts of subordinate ids: only removable in there
    store = ImageStore(root.path)
    dropped: list[str] = []
    freed = 0
    if store.path.is_dir():
        before = _dir_size(store.layers_dir)
        mounts, freed = _drop_cache_mounts(store)
        dropped = _drop_build_cache(store) + mounts
        store.prune()
        freed += max(0, before - _dir_size(store.layers_dir))
    _report([("Deleted build cache objects:", dropped)], freed)
    return 0


def _add_container_prune(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-f", "--force", action="store_true", help="do not ask (strata never asks)")


def _run_container_prune(args: argparse.Namespace, runner: Runner) -> int:
    from runtime.state import StateRoot

    removed, freed = prune_containers(StateRoot(root_path(args)))
    _report([("Deleted Containers:", removed)], freed)
    return 0


DF: Final = Subcommand(
    "df", "disk usage of images, containers, volumes and the build cache", _add_df, _run_df
)
PRUNE: Final = Subcommand(
    "prune",
    "remove stopped containers, unused networks, untagged images and the build cache",
    _add_prune,
    _run_prune,
)
BUILDER_PRUNE: Final = Subcommand(
    "prune",
    "remove the build cache (cache entries and RUN cache mounts)",
    _add_builder_prune,
    _run_builder_prune,
)
CONTAINER_PRUNE: Final = Subcommand(
    "prune", "remove every stopped container", _add_container_prune, _run_container_prune
)
