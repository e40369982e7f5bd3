"""Pull policies: how `run`, `create` and `build` (FROM) get an image, as docker's `--pull`.

- `missing` (the default): the store's image when there is one, else a pull;
- `always`: a pull every time (it downloads only the layers the store lacks, so an image that did
  not change costs a manifest and a config), then the store's image;
- `never`: the store's image or nothing.

A short name is found in the store as it was given (a bare `name` is `localhost/name`, as podman
keeps local images) and as each qualified name registries.conf makes of it, so `strata run debian`
finds `docker.io/library/debian` after a pull through a search registry. A reference that names
an existing directory is left to the runtime (a rootfs directory), and an image id is never
pulled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from unionfs.errors import UsageError

from .reference import parse
from .registries import Options, RegistriesConf, load_conf
from .store import ImageRecord, ImageStore

POLICIES: Final = ("missing", "always", "never")


def find_local(
    store: ImageStore, ref: str, conf: RegistriesConf | None = None
) -> ImageRecord | None:
    """The store's image for `ref`, trying a short name's qualified forms too."""
    rec = store.find(ref)
    if rec is not None:
        return rec
    try:
        parsed = parse(ref)
    except UsageError:
        return None
    if not parsed.short:
        return None
    try:
        candidates = (conf or load_conf()).candidates(parsed)
    except UsageError:
        return None  # no search registries: nothing else it could stand for
    for candidate in candidates:
        rec = store.find(str(candidate))
        if rec is not None:
            return rec
    return None


def obtain(
    store: ImageStore,
    ref: str,
    policy: str,
    options: Options,
    *,
    platform: str | None = None,
    quiet: bool = False,
) -> ImageRecord | None:
    """The image `ref` as `policy` says (see the module doc); None when the store has no such
    image and the policy or the reference forbids pulling it."""
    if policy not in POLICIES:
        raise UsageError(f"--pull {policy!r}: one of {', '.join(POLICIES)}", 125)
    conf = load_conf() if policy != "never" else None
    rec = find_local(store, ref, conf)
    by_id = (
        rec is not None
        and ref.removeprefix("sha256:")
        and rec.id.startswith(ref.removeprefix("sha256:"))
    )
    if policy == "never" or by_id or (rec is not None and policy == "missing"):
        return rec
    if os.path.isdir(ref) or ref.startswith(("/", ".")):
        return rec  # a rootfs directory: the runtime's business
    parsed = parse(ref)
    if parsed.short:
        assert conf is not None
        try:
            conf.candidates(parsed)
        except UsageError as e:
            raise UsageError(f"no such image: {ref} (a short name; {e})", 125) from None
    from .pull import pull_reporting  # httpx and trio: only when pulling

    def pull() -> str:
        from runtime.namespaces import enter_rootless

        enter_rootless()  # rootless, the layers keep their owners, as after `strata pull`
        return pull_reporting(store, ref, options, platform=platform, quiet=quiet, conf=conf).id

    image_id = _in_child(pull)
    return store.get(image_id)


def _in_child(work: Callable[[], str]) -> str:
    """`work()` in a forked child; its result (a short string) comes back through a pipe, its
    failure as the same one-line UsageError.

    Why: a pull runs trio and httpx, which start threads (name lookups, extraction) that
    outlive it, and a threaded process cannot enter a user namespace, which a rootless `strata
    run` does right after finding its image. The child takes the threads with it."""
    import signal
    import sys

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        code, out = 0, b""
        try:
            out = b"ok:" + work().encode()
        except UsageError as e:
            code, out = e.exit_code, b"err:" + str(e).encode()
        except KeyboardInterrupt:
            code = 130
        except BaseException as e:  # a bug: still one line
            code, out = 125, f"err:unexpected error: {type(e).__name__}: {e}".encode()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                os.write(write_end, out)
            finally:
                os._exit(code)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
    finally:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0 and data.startswith(b"ok:"):
        return data[3:].decode()
    if code in (130, -signal.SIGINT):
        raise KeyboardInterrupt
    if data.startswith(b"err:"):
        raise UsageError(data[4:].decode(errors="replace"), code if code > 0 else 125)
    raise UsageError(f"the pull ended with status {code}", 125)
