"""`strata build`: an image from a Dockerfile, one step per instruction, with a build cache.

How each instruction is carried out:

- FROM: an image in the store or `scratch` (one stage: a second FROM is refused).
- RUN: a container of the runtime (`runtime.create.create` + `runtime.lifecycle.run_attached`,
  host network) on the image so far, with its Env, WorkingDir and User and the build args in effect; its upper
  dir becomes the step's layer through the changeset code `strata commit` uses. The container is
  removed whatever happens.
- COPY, ADD, and WORKDIR (which creates the directory when missing): the image so far is mounted
  as a union with a fresh upper dir (`runtime.rootfs.UnionRootfs`, as a container's rootfs), the
  files are written through the mount, and the upper becomes the layer the same way. So copy-up,
  whiteouts and symlinks in the destination path (`/bin -> usr/bin`) behave as in a container.
- ENV, ARG, USER, CMD, ENTRYPOINT, LABEL, MAINTAINER, EXPOSE, SHELL, STOPSIGNAL: the config only (`empty_layer`
  in the history, as Docker); ARG is not recorded at all (only RUN sees its values).

The cache: every step's result (the whole config and the layer list) is kept under
`images/cache/<key>.json`, the key being a sha256 of the state before the step (config and
layers) and the step's text after substitution; RUN adds the build args it sees, COPY/ADD the
xxh3 digest of the selected sources (names, modes, owners, link targets, contents). A hit whose
layers were pruned meanwhile is a miss. So an unchanged rebuild does no work and, the configs
(with their `created` times) being the cached ones, gives the same image id.

Before anything runs the whole Dockerfile is checked: an unsupported instruction or flag fails
with its line number and nothing is stored. A step that fails (a RUN exiting non-zero, a source
missing from the context) ends the build with its line number: no image is tagged, no container
or mount is left; layers of the steps that succeeded stay in the store as cache (`prune` removes
them while nothing else uses them).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import posixpath
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.namespaces import current_id_map, in_user_namespace
from unionfs.errors import UsageError

from .buildcheck import BuildError, Plan, Stage, check_dockerfile, check_trigger
from .context import Context, ContextError, IgnoreRules, StageRoot
from .copier import Copier, CopyError, Source, make_dirs, resolve_chown
from .dockerfile import (
    DockerfileError,
    Heredoc,
    Instruction,
    expand,
    expand_heredoc,
    expand_words,
    name_values,
    parse,
    raw_words,
)
from .policy import obtain
from .registries import Options
from .runmounts import MountSpecError, RunMount, parse_mount
from .store import ImageRecord, ImageStore, normalize_ref

if TYPE_CHECKING:
    from runtime.images import ImageSpec
    from runtime.state import Volume


# Where a RUN's `#!` here-document is bound as a file (BuildKit uses /dev/pipes too).
HEREDOC_DIR = "/dev/pipes"


@dataclass(frozen=True, slots=True)
class BuildOptions:
    dockerfile: Path
    context: Path
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: str = "missing"  # FROM images: images.policy's policies
    registry: Options = field(default_factory=Options)
    platform: str | None = None
    quiet: bool = False  # no pull progress
    target: str | None = None  # the stage to build (--target); default the last
    secrets: Mapping[str, bytes] = field(default_factory=dict)  # --secret id -> its contents
    dockerfile_text: str | None = None  # `-f -` or a Dockerfile on stdin: not read from a file
    labels: Mapping[str, str] = field(default_factory=dict)  # --label: the built image's only
    network: str = "default"  # --network: RUN's when the RUN has no --network of its own
    add_hosts: tuple[str, ...] = ()  # --add-host NAME:IP, in RUN's /etc/hosts
    output: Output | None = None  # --output: the result's files exported, no image stored


@dataclass(frozen=True, slots=True)
class Output:
    """`--output type=local,dest=DIR` (or `-o DIR`) or `type=tar,dest=FILE|-` (or `-o -`): as
    BuildKit's exporters, the target stage's files instead of an image."""

    kind: str  # "local" or "tar"
    dest: str  # a directory, a file, or "-" (stdout)

    @classmethod
    def parse(cls, text: str) -> Output:
        if "=" not in text.split(",", 1)[0]:
            return cls("tar", "-") if text == "-" else cls("local", text)
        fields: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or key not in ("type", "dest"):
                raise UsageError(f"--output {text}: expected type=local|tar,dest=PATH", 125)
            fields[key] = value
        kind, dest = fields.get("type", "local"), fields.get("dest", "")
        if kind not in ("local", "tar"):
            raise UsageError(
                f"--output {text}: type {kind!r} is not supported (local or tar; an image is"
                " stored without --output)",
                125,
            )
        if not dest:
            raise UsageError(f"--output {text}: dest= is required", 125)
        if kind == "local" and dest == "-":
            raise UsageError(f"--output {text}: a local output needs a directory", 125)
        return cls(kind, dest)


@dataclass(slots=True)
class _State:
    """The image as built so far: its whole config (OCI image config) and layers, base first."""

    config: dict[str, object]
    layers: list[str]
    stored_id: str | None = None  # a FROM image's id (its stored config's bytes may differ)

    @property
    def inner(self) -> dict[str, object]:
        inner = self.config.setdefault("config", {})
        assert isinstance(inner, dict)
        return inner

    def env(self) -> dict[str, str]:
        out = {}
        for item in self.inner.get("Env") or []:  # type: ignore[attr-defined]
            name, _, value = str(item).partition("=")
            out[name] = value
        return out

    def key(self) -> str:
        data = {"config": self.config, "layers": self.layers}
        return hashlib.sha256(_canonical(data)).hexdigest()

    def image_id(self) -> str:
        """The id of the image this state would be (the store's: the config's sha256), which
        each step prints, so the last step's id is the one "Successfully built" names."""
        return self.stored_id or hashlib.sha256(_canonical(self.config)).hexdigest()


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# ---------------------------------------------------------------------------------------------
# the builder


class Builder:
    """One build (see the module doc). `say` prints the progress lines."""

    def __init__(
        self, store: ImageStore, opts: BuildOptions, say: Callable[[str], None] = print
    ) -> None:
        self.store = store
        self.opts = opts
        self.say = say
        self.where = opts.dockerfile.name
        self.escape = "\\"
        self.args: dict[str, str | None] = {}  # declared ARGs of the stage -> value
        self.global_args: dict[str, str | None] = {}
        self.used_args: set[str] = set()
        self.cmd_set = False
        self.staging: Path = Path()
        self.held: list[str] = []
        self.context = Context(opts.context)
        self.layer_count = 0
        self.plan = Plan((), (), 0)
        self.results: dict[int, _State] = {}  # built stages by index

    # -- the whole build

    def build(self) -> ImageRecord | None:
        if not self.opts.context.is_dir():
            raise BuildError(f"{self.opts.context}: the build context is not a directory")
        text = self.opts.dockerfile_text
        if text is None:
            try:
                text = self.opts.dockerfile.read_text(errors="surrogateescape")
            except OSError as e:
                raise BuildError(f"{self.opts.dockerfile}: {e.strerror}") from None
        try:
            dockerfile = parse(text)
        except DockerfileError as e:
            raise BuildError(f"{self.where}:{e.line}: {_message(e)}") from None
        self.escape = dockerfile.escape
        plan = check_dockerfile(dockerfile.instructions, self.where)
        self.plan = plan
        target = plan.stages[-1]
        if self.opts.target is not None:
            found = plan.stage(self.opts.target, len(plan.stages))
            if found is None or self.opts.target.isdigit():
                raise BuildError(f"--target {self.opts.target}: no stage of that name")
            target = found
        tags = tuple(normalize_ref(t) for t in self.opts.tags)
        self.global_args.update(self._platform_args())
        for step, ins in enumerate(plan.prelude, 1):
            self.say(f"Step {step}/{plan.total} : {ins}")
            self._arg(ins, self.global_args)
        needed = self._needed(target)
        with self.store.staging() as staging:
            self.staging = staging
            for stage in plan.stages[: target.index + 1]:
                if stage.index in needed and stage.index not in self.results:
                    self._stage(stage)
            state = self.results[target.index]
            unused = sorted(set(self.opts.build_args) - self.used_args)
            if unused:
                print(
                    f"strata: warning: build args not consumed: {' '.join(unused)}",
                    file=sys.stderr,
                )
            if self.opts.output is not None:
                self._export(state, self.opts.output)
                return None
            if self.opts.labels:  # the built image's config only: no step, no cache entry
                state = _State(copy.deepcopy(state.config), state.layers)
                labels = state.inner.get("Labels") or {}
                assert isinstance(labels, dict)
                state.inner["Labels"] = {**labels, **self.opts.labels}
            raw = _canonical(state.config)
            with self.store.lock():
                for diff_id in state.layers:
                    if not self.store.has_layer(diff_id):
                        raise BuildError(f"layer sha256:{diff_id} was removed during the build")
                rec = self.store.add_image(raw, state.config, list(state.layers), list(tags))
        self.say(f"Successfully built {rec.id[:12]}")
        for tag in tags:
            self.say(f"Successfully tagged {tag}")
        return rec

    def _export(self, state: _State, output: Output) -> None:
        """`--output`: the files of `state`, read through a mount of it, as a tar (a file or
        stdout) or into a directory. Rootless, the directory's files are the user's (owners of
        the user's subordinate ids would be files the user could not remove)."""
        from .cp import write_tar
        from .extract import LayerError, extract_into

        with self._mounted(state) as (mnt, _upper):
            if output.kind == "tar":
                if output.dest == "-":
                    sys.stdout.flush()
                    write_tar(sys.stdout.buffer, str(mnt), ".", follow=False, skip_devs=frozenset())
                    sys.stdout.buffer.flush()
                    return
                tmp = Path(f"{output.dest}.{os.getpid()}.tmp")
                try:
                    with open(tmp, "wb") as out:
                        write_tar(out, str(mnt), ".", follow=False, skip_devs=frozenset())
                    os.rename(tmp, output.dest)
                except OSError as e:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise BuildError(f"--output {output.dest}: {e.strerror}") from None
                return
            archive = self.staging / "output.tar"
            with open(archive, "wb") as out:
                write_tar(out, str(mnt), ".", follow=False, skip_devs=frozenset())
        dest = Path(output.dest)
        try:
            dest.mkdir(parents=True, exist_ok=True)
            with open(archive, "rb") as stream:
                extract_into(
                    stream,
                    dest,
                    rename=lambda rel: rel,
                    owner=(0, 0) if in_user_namespace() else None,
                )
        except (OSError, LayerError) as e:
            raise BuildError(f"--output {output.dest}: {_describe_any(e)}") from None
        finally:
            archive.unlink()

    def _platform_args(self) -> dict[str, str | None]:
        """BuildKit's automatic platform ARGs, in the global scope (a stage sees one after an
        `ARG NAME` without a value): the build platform is this machine, the target
        `--platform` or this machine."""
        build = f"linux/{_arch()}"
        target = self.opts.platform or build
        out: dict[str, str | None] = {}
        for prefix, platform in (("BUILD", build), ("TARGET", target)):
            os_name, _, rest = platform.partition("/")
            arch, _, variant = rest.partition("/")
            out |= {
                f"{prefix}PLATFORM": platform,
                f"{prefix}OS": os_name,
                f"{prefix}ARCH": arch,
                f"{prefix}VARIANT": variant,
            }
        return out

    def _needed(self, target: Stage) -> set[int]:
        """The stages the target needs (its FROM and COPY --from, named with the global
        build args): only those are built, each once, as BuildKit and buildah do."""
        env = {k: v for k, v in self.global_args.items() if v is not None}
        needed: set[int] = set()
        todo = [target]
        while todo:
            stage = todo.pop()
            if stage.index in needed:
                continue
            needed.add(stage.index)
            refs = []
            with contextlib.suppress(DockerfileError, IndexError):
                refs.append(expand_words(stage.instructions[0].args, env, self.escape)[0])
            for ins in stage.instructions[1:]:
                ref = ins.flag("from") if ins.keyword == "COPY" else None
                if ref:
                    with contextlib.suppress(DockerfileError):
                        refs.append(expand(ref, env, self.escape))
                for name, value in ins.flags if ins.keyword == "RUN" else ():
                    if name == "mount" and value:
                        with contextlib.suppress(DockerfileError, MountSpecError):
                            mount = parse_mount(expand(value, env, self.escape), "/")
                            refs += [mount.from_ref] if mount.from_ref else []
            for ref in refs:
                dep = self.plan.stage(ref, stage.index)
                if dep is not None:
                    todo.append(dep)
        return needed

    def _stage(self, stage: Stage) -> _State:
        """Build one stage (its FROM and instructions); its result is kept for the stages
        after it. Each stage has its own ARGs, as in Docker."""
        saved = self.args, self.cmd_set
        self.args, self.cmd_set = {}, False
        try:
            total = self.plan.total
            first = stage.instructions[0]
            self.say(f"Step {stage.first}/{total} : {first}")
            state = self._from(first, stage)
            self.say(f" ---> {state.image_id()[:12]}")
            state = self._triggers(first, state, stage)
            for step, ins in enumerate(stage.instructions[1:], stage.first + 1):
                self.say(f"Step {step}/{total} : {ins}")
                state = self._step(ins, state, stage)
        finally:
            self.args, self.cmd_set = saved
        self.results[stage.index] = state
        return state

    def _triggers(self, first: Instruction, state: _State, stage: Stage) -> _State:
        """The base's ONBUILD triggers, run right after FROM as Docker does (errors name the
        FROM line); the new image does not inherit them."""
        triggers = [str(t) for t in state.inner.get("OnBuild") or []]  # type: ignore[attr-defined]
        if not triggers:
            return state
        state = _State(copy.deepcopy(state.config), list(state.layers))
        state.inner.pop("OnBuild", None)
        self.say(f"# Executing {len(triggers)} build trigger{'s' * (len(triggers) > 1)}")
        for text in triggers:
            ins = dataclasses.replace(check_trigger(text, self._at(first)), line=first.line)
            self.say(f"Trigger: {ins}")
            state = self._step(ins, state, stage)
        return state

    def _stage_result(self, stage: Stage) -> _State:
        """A stage's result, built now if the plan did not see it was needed (a --from
        named through a stage's own ARG)."""
        found = self.results.get(stage.index)
        return found if found is not None else self._stage(stage)

    def _at(self, ins: Instruction) -> str:
        return f"{self.where}:{ins.line}"

    def _expand(self, ins: Instruction, text: str, state: _State) -> str:
        try:
            return expand(text, self._env(state), self.escape)
        except DockerfileError as e:
            raise BuildError(f"{self._at(ins)}: {ins.keyword}: {_message(e)}") from None

    def _words(self, ins: Instruction, text: str, state: _State) -> list[str]:
        try:
            return expand_words(text, self._env(state), self.escape)
        except DockerfileError as e:
            raise BuildError(f"{self._at(ins)}: {ins.keyword}: {_message(e)}") from None

    def _env(self, state: _State | None) -> dict[str, str]:
        """What `$VAR` means in an instruction: the build args in effect, then ENV over them."""
        env = {k: v for k, v in self.args.items() if v is not None}
        if state is not None:
            env.update(state.env())
        return env

    # -- ARG and FROM

    def _arg(
        self, ins: Instruction, scope: dict[str, str | None], state: _State | None = None
    ) -> None:
        """ARG NAME[=default]...: a --build-arg overrides the default; in the stage, an ARG
        without a default takes the value of a global (before FROM) ARG of the same name."""
        for word in raw_words(ins.args, self.escape):
            name, sep, default = word.partition("=")
            if not name:
                raise BuildError(f"{self._at(ins)}: ARG: empty name")
            env = {k: v for k, v in scope.items() if v is not None}
            if state is not None:
                env.update(state.env())
            value: str | None = None
            if sep:
                try:
                    value = expand(default, env, self.escape)
                except DockerfileError as e:
                    raise BuildError(f"{self._at(ins)}: ARG: {_message(e)}") from None
            elif scope is self.args:
                value = self.global_args.get(name)
            if name in self.opts.build_args:
                value = self.opts.build_args[name]
                self.used_args.add(name)
            scope[name] = value

    def _from(self, ins: Instruction, stage: Stage) -> _State:
        global_env = {k: v for k, v in self.global_args.items() if v is not None}
        try:
            words = expand_words(ins.args, global_env, self.escape)
        except DockerfileError as e:
            raise BuildError(f"{self._at(ins)}: FROM: {_message(e)}") from None
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise BuildError(f"{self._at(ins)}: FROM IMAGE [AS NAME] expected")
        ref = words[0]
        platform = ins.flag("platform")
        if platform is not None:
            try:
                wanted = expand(platform, global_env, self.escape)
            except DockerfileError as e:
                raise BuildError(f"{self._at(ins)}: FROM: {_message(e)}") from None
            here = {str(global_env.get("BUILDPLATFORM")), str(global_env.get("TARGETPLATFORM"))}
            if wanted not in here:
                raise BuildError(
                    f"{self._at(ins)}: FROM --platform={wanted}: strata builds only for"
                    f" {' or '.join(sorted(here))} (no emulation)"
                )
        earlier = self.plan.stage(ref, stage.index) if not ref.isdigit() else None
        if earlier is not None:  # FROM an earlier stage: its result
            done = self._stage_result(earlier)
            return _State(copy.deepcopy(done.config), list(done.layers))
        return self._image_state(ins, "FROM", ref)

    def _image_state(self, ins: Instruction, what: str, ref: str) -> _State:
        """An image of the store (pulled by the pull policy) or `scratch`, held by the build."""
        if ref == "scratch":
            state = _State(
                config={
                    "architecture": _arch(),
                    "os": "linux",
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []},
                    "history": [],
                },
                layers=[],
            )
        else:
            try:
                rec = obtain(
                    self.store,
                    ref,
                    self.opts.pull,
                    self.opts.registry,
                    platform=self.opts.platform,
                    quiet=self.opts.quiet,
                )
            except UsageError as e:
                raise BuildError(f"{self._at(ins)}: {what} {ref}: {e}") from None
            if rec is None:
                raise BuildError(f"{self._at(ins)}: {what} {ref}: no such image in the store")
            state = _State(copy.deepcopy(rec.config), list(rec.layers), stored_id=rec.id)
        with self.store.lock():
            for diff_id in state.layers:
                if not self.store.has_layer(diff_id):
                    raise BuildError(f"{self._at(ins)}: {what} {ref}: layer {diff_id[:12]} missing")
            self.held = sorted({*self.held, *state.layers})
            self.store.hold(self.staging, self.held)
        return state

    # -- one step, through the cache

    def _step(self, ins: Instruction, state: _State, stage: Stage) -> _State:
        kw = ins.keyword
        if kw == "ARG":
            self._arg(ins, self.args, state)
            return state
        if kw == "RUN":
            argv, script = self._run_argv(ins, state)
            args = self._run_args(state)
            mounts, sources, network = self._run_flags(ins, state, stage)
            shown = " ".join(argv)
            if args:
                shown = f"|{len(args)} {' '.join(args)} {shown}"
            key: dict[str, object] = {"RUN": argv, "args": args, "script": script}
            if mounts:
                key["mounts"] = [
                    m.key() | {"src": k} for m, (_s, k) in zip(mounts, sources, strict=True)
                ]
                shown = " ".join(f"--mount={_mount_text(m)}" for m in mounts) + f" {shown}"
            if network != "host":
                key["network"] = network
                shown = f"--network={network} {shown}"
            return self._cached(
                ins,
                state,
                _canonical(key).decode(),
                f"RUN {shown}",
                lambda: self._run(ins, state, argv, args, script, mounts, sources, network),
            )
        if kw in ("COPY", "ADD"):
            return self._copy_step(ins, state, stage)
        if kw == "WORKDIR":
            path = self._expand(ins, ins.args, state)
            if not path.startswith("/"):
                path = posixpath.join(str(state.inner.get("WorkingDir") or "/"), path)
            path = posixpath.normpath(path)
            return self._cached(
                ins, state, f"WORKDIR {path}", f"WORKDIR {path}", lambda: self._workdir(state, path)
            )
        new, shown = self._metadata(ins, state)
        return self._cached(ins, state, shown, shown, lambda: new)

    def _copy_step(self, ins: Instruction, state: _State, stage: Stage) -> _State:
        """COPY/ADD from the context, from here-documents, or (COPY --from) from an earlier
        stage or an image; keyed by the sources' digest, or by the stage's or image's state."""
        kw = ins.keyword
        chown, sources, dest = self._copy_args(ins, state)
        docs = {f"<<{doc.name}": doc for doc in ins.heredocs}
        from_ref = ins.flag("from")
        key: dict[str, object] = {kw: [*sources, dest], "chown": chown}
        downloads: dict[str, tuple[Path, str]] = {}  # ADD's URLs: the file, its sha256
        flags = ""
        if ins.flag("chmod") is not None:
            key["chmod"] = self._chmod(ins, state)
            flags += f"--chmod={ins.flag('chmod')} "
        if _linked(ins):
            key["link"] = True
            flags += "--link "
        src_state: _State | None = None
        if from_ref:
            from_ref = self._expand(ins, from_ref, state)
            src_state = self._from_state(ins, from_ref, stage)
            key["from"] = src_state.key()
            shown = f"{kw} {flags}--from={from_ref} "
        else:
            contents = {w: self._heredoc_text(ins, docs[w], state) for w in sources if w in docs}
            checksum = ins.flag("checksum")
            if checksum is not None:  # the download is checked against it, so it is the key
                key["checksum"] = self._expand(ins, checksum, state)
            else:
                for url in filter(_is_http, sources):
                    downloads[url] = self._download(ins, url, None)
                    key.setdefault("urls", {})[url] = downloads[url][1]  # type: ignore[index]
            try:
                picked = [
                    p
                    for s in sources
                    if s not in docs and not _is_http(s)
                    for p in self.context.select(s)
                ]
                key["src"] = self.context.digest(picked)
            except ContextError as e:
                raise BuildError(f"{self._at(ins)}: {kw} failed: {e}") from None
            if contents:
                key["heredocs"] = contents
            shown = f"{kw} {flags}"
        shown += f"{'--chown=' + chown + ' ' if chown else ''}{' '.join(sources)} {dest}"

        def make() -> tuple[_State, str]:
            if src_state is None:
                for url in filter(_is_http, sources):
                    if url not in downloads:
                        downloads[url] = self._download(ins, url, str(key["checksum"]))
                try:
                    picked = self._context_sources(sources, docs, contents, downloads)
                except ContextError as e:
                    raise BuildError(f"{self._at(ins)}: {kw} failed: {e}") from None
                return self._copy(ins, state, chown, picked, dest)
            with self._mounted(src_state) as (src_root, _):
                tree = StageRoot(src_root)
                try:
                    picked = [(tree, rel) for s in sources for rel in tree.select(s)]
                except (ContextError, OSError) as e:
                    raise BuildError(f"{self._at(ins)}: {kw} failed: {_describe_any(e)}") from None
                return self._copy(ins, state, chown, picked, dest)

        return self._cached(ins, state, _canonical(key).decode(), shown, make)

    def _from_state(self, ins: Instruction, ref: str, stage: Stage) -> _State:
        """What COPY --from=REF names: an earlier stage (by name or index), or an image."""
        found = self.plan.stage(ref, stage.index)
        if found is not None:
            return self._stage_result(found)
        if ref.isdigit() or self.plan.stage(ref, len(self.plan.stages)) is not None:
            raise BuildError(f"{self._at(ins)}: COPY --from={ref}: names this stage or a later one")
        return self._image_state(ins, "COPY --from", ref)

    def _heredoc_text(self, ins: Instruction, doc: Heredoc, state: _State) -> str:
        if not doc.expand:
            return doc.body
        try:
            return expand_heredoc(doc.body, self._env(state), self.escape)
        except DockerfileError as e:
            raise BuildError(f"{self._at(ins)}: {ins.keyword}: {_message(e)}") from None

    def _context_sources(
        self,
        sources: list[str],
        docs: Mapping[str, Heredoc],
        contents: Mapping[str, str],
        downloads: Mapping[str, tuple[Path, str]],
    ) -> list[tuple[Source, str]]:
        """The context paths, here-document files and downloads a COPY/ADD copies, in order."""
        picked: list[tuple[Source, str]] = []
        for source in sources:
            if source in downloads:
                path = downloads[source][0]
                picked.append((Context(path.parent, IgnoreRules([])), path.name))
                continue
            if source not in docs:
                picked += [(self.context, rel) for rel in self.context.select(source)]
                continue
            self.layer_count += 1
            where = self.staging / f"heredoc{self.layer_count}"
            where.mkdir(mode=0o700)
            name = docs[source].name
            (where / name).write_text(contents[source], errors="surrogateescape")
            os.chmod(where / name, 0o644)
            picked.append((Context(where, IgnoreRules([])), name))
        return picked

    def _download(self, ins: Instruction, url: str, checksum: str | None) -> tuple[Path, str]:
        """ADD's URL, fetched into the staging dir as Docker keeps it: named by the URL path's
        last component, mode 0600, its mtime the Last-Modified header's; (file, sha256).
        `checksum` (`sha256:HEX`) must match."""
        import email.utils
        import urllib.parse

        import httpx

        name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))
        if name in ("", ".", ".."):
            raise BuildError(f"{self._at(ins)}: ADD {url}: the URL names no file")
        self.layer_count += 1
        where = self.staging / f"url{self.layer_count}"
        where.mkdir(mode=0o700)
        path = where / name
        digest = hashlib.sha256()
        try:
            with (
                httpx.Client(follow_redirects=True, timeout=60.0) as client,
                client.stream("GET", url) as reply,
            ):
                if reply.status_code != 200:
                    raise BuildError(f"{self._at(ins)}: ADD {url}: HTTP {reply.status_code}")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    for chunk in reply.iter_bytes(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                modified = reply.headers.get("last-modified")
        except httpx.HTTPError as e:
            raise BuildError(f"{self._at(ins)}: ADD {url}: {e}") from None
        if checksum is not None and checksum != f"sha256:{digest.hexdigest()}":
            raise BuildError(
                f"{self._at(ins)}: ADD --checksum={checksum}: {url} has sha256:{digest.hexdigest()}"
            )
        if modified:
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(modified).timestamp()
                os.utime(path, (when, when))
        return path, digest.hexdigest()

    def _cached(
        self,
        ins: Instruction,
        state: _State,
        key_text: str,
        created_by: str,
        make: Callable[[], _State | tuple[_State, str | None]],
    ) -> _State:
        """The step's result from the cache, or made now (and cached); `make` returns the
        state with its config changes, and a new layer's diff_id (None for none)."""
        key = hashlib.sha256(f"{state.key()}\n{key_text}".encode()).hexdigest()
        entry = self.store.cache_dir / f"{key}.json"
        if not self.opts.no_cache:
            hit = self._cache_hit(entry)
            if hit is not None:
                self.say(" ---> Using cache")
                self.say(f" ---> {hit.image_id()[:12]}")
                return hit
        made = make()
        new, layer = made if isinstance(made, tuple) else (made, None)
        new = _State(copy.deepcopy(new.config), list(new.layers))
        created = _now()
        history = list(new.config.get("history") or [])  # type: ignore[call-overload]
        item: dict[str, object] = {"created": created, "created_by": created_by}
        if layer is None:
            item["empty_layer"] = True
        else:
            new.layers.append(layer)
        history.append(item)
        new.config["history"] = history
        new.config["created"] = created
        new.config["rootfs"] = {
            "type": "layers",
            "diff_ids": [f"sha256:{d}" for d in new.layers],
        }
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_canonical({"config": new.config, "layers": new.layers}))
        os.rename(tmp, entry)
        self.say(f" ---> {new.image_id()[:12]}")
        return new

    def _cache_hit(self, entry: Path) -> _State | None:
        try:
            data = json.loads(entry.read_bytes())
            config, layers = data["config"], [str(d) for d in data["layers"]]
            assert isinstance(config, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return None
        with self.store.lock():
            if not all(self.store.has_layer(d) for d in layers):
                return None  # pruned meanwhile: a miss
            self.held = sorted(set(self.held) | set(layers))
            self.store.hold(self.staging, self.held)
        return _State(config, layers)

    def _add_layer(self, upper: Path, below: Sequence[Path]) -> str:
        """The upper dir (over the lower layers `below`, top first) as a layer in the store, held
        by this build; its diff_id."""
        from .commit import layer_from_upper

        self.layer_count += 1
        name = f"layer{self.layer_count}"
        diff_id, dest, tar_map = layer_from_upper(upper, below, self.staging, name)
        with self.store.lock():
            self.store.add_layer(diff_id, dest, tar_map)
            self.held = sorted({*self.held, diff_id})
            self.store.hold(self.staging, self.held)
        return diff_id

    # -- RUN

    def _run_argv(self, ins: Instruction, state: _State) -> tuple[list[str], str | None]:
        """RUN's command, and the script a here-document with a `#!` line is run as (None).

        As BuildKit: a RUN that is one here-document alone runs its body with the shell, or
        as an executable file when it starts with `#!`; with a command around it, the shell
        gets the command line and the bodies as written, and reads the here-documents itself."""
        if ins.exec_form is not None:
            if not ins.exec_form:
                raise BuildError(f"{self._at(ins)}: RUN needs a command")
            return list(ins.exec_form), None
        if not ins.heredocs:
            return [*_shell(state), ins.args], None
        doc = ins.heredocs[0]
        if len(ins.heredocs) == 1 and raw_words(ins.args, self.escape) == [doc.word]:
            if doc.body.startswith("#!"):
                return [f"{HEREDOC_DIR}/{doc.name}"], doc.body
            return [*_shell(state), doc.body], None
        return [*_shell(state), ins.args + "\n" + "".join(d.raw for d in ins.heredocs)], None

    def _run_flags(
        self, ins: Instruction, state: _State, stage: Stage
    ) -> tuple[list[RunMount], list[tuple[_State | None, str]], str]:
        """RUN's `--mount`s (with, for a bind, the stage or image its source is in and the
        digest of what it binds, for the cache key), and its `--network`."""
        workdir = str(state.inner.get("WorkingDir") or "/")
        mounts: list[RunMount] = []
        sources: list[tuple[_State | None, str]] = []
        for name, value in ins.flags:
            if name != "mount":
                continue
            try:
                mount = parse_mount(self._expand(ins, value or "", state), workdir)
            except MountSpecError as e:
                raise BuildError(f"{self._at(ins)}: RUN --mount={value}: {e}") from None
            if mount.kind == "secret" and mount.required and mount.id not in self.opts.secrets:
                raise BuildError(
                    f"{self._at(ins)}: RUN --mount=type=secret,id={mount.id}: no such secret"
                    f" (strata build --secret id={mount.id},src=FILE)"
                )
            source: tuple[_State | None, str] = (None, "")
            if mount.kind == "bind" and mount.from_ref:
                src_state = self._from_state(ins, mount.from_ref, stage)
                source = (src_state, src_state.key())
            elif mount.kind == "bind":
                try:
                    picked = self.context.select(mount.source or ".")
                    source = (None, self.context.digest(picked))
                except ContextError as e:
                    raise BuildError(f"{self._at(ins)}: RUN --mount: {e}") from None
            mounts.append(mount)
            sources.append(source)
        network = ins.flag("network") or self.opts.network
        if network not in ("default", "host", "none"):
            raise BuildError(
                f"{self._at(ins)}: RUN --network={network}: expected default, none or host"
            )
        security = ins.flag("security")
        if security not in (None, "sandbox"):
            raise BuildError(
                f"{self._at(ins)}: RUN --security={security}: only the sandbox (the default) runs here"
            )
        return mounts, sources, "none" if network == "none" else "host"

    def _run_args(self, state: _State) -> list[str]:
        """The build args a RUN sees (K=V, sorted): set ones that no ENV of the same name hides."""
        env = state.env()
        return sorted(f"{k}={v}" for k, v in self.args.items() if v is not None and k not in env)

    def _run(
        self,
        ins: Instruction,
        state: _State,
        argv: list[str],
        args: list[str],
        script: str | None,
        mounts: Sequence[RunMount] = (),
        sources: Sequence[tuple[_State | None, str]] = (),
        network: str = "host",
    ) -> tuple[_State, str]:
        from runtime.create import CreateRequest, create, union_config
        from runtime.lifecycle import remove, run_attached
        from runtime.state import Volume

        root = self.store.state
        volumes: list[Volume] = []
        if script is not None:  # bound read-only below /dev (a tmpfs): not in the layer
            self.layer_count += 1
            path = self.staging / f"script{self.layer_count}"
            path.write_text(script, errors="surrogateescape")
            os.chmod(path, 0o755)
            volumes.append(Volume(str(path), argv[0], read_only=True))
        with contextlib.ExitStack() as stack:
            stubs = self._mount_stubs(state, mounts) if mounts else []
            env = list(args)
            for mount, (src_state, _digest) in zip(mounts, sources, strict=True):
                volume, secret_env = self._run_mount(ins, mount, src_state, stack)
                if volume is not None:
                    volumes.append(volume)
                if secret_env is not None:
                    env.append(secret_env)
            rootless = in_user_namespace()  # a rootless build runs in the user's (see build())
            req = CreateRequest(
                image=self._spec(state),
                argv=tuple(argv),
                entrypoint=(),
                env=tuple(env),
                network=network,
                volumes=tuple(volumes),
                rootless=rootless,
                id_map=current_id_map() if rootless else None,
                add_hosts=self.opts.add_hosts,
            )
            cdir = create(root, req)
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                try:
                    code = run_attached(root, cdir, remove_on_failure=False)
                except UsageError as e:
                    raise BuildError(
                        f"{self._at(ins)}: RUN {' '.join(argv)}: exit status {e.exit_code}: {e}"
                    ) from None
                if code != 0:
                    raise BuildError(f"{self._at(ins)}: RUN {' '.join(argv)}: exit status {code}")
                upper = cdir.sub("upper")
                _remove_stubs(upper, stubs)
                return state, self._add_layer(upper, union_config(cdir).lowers)
            finally:
                remove(root, cdir, force=True)

    def _mount_stubs(self, state: _State, mounts: Sequence[RunMount]) -> list[tuple[str, str]]:
        """For each mount target missing from the image: (the target, its first missing
        ancestor), relative to the root, as the image resolves them. The runtime makes them to
        mount on; `_remove_stubs` takes them out of the layer again, as BuildKit does."""
        from runtime.mounts import resolve_in_root

        stubs = []
        with self._mounted(state) as (mnt, _upper):
            for mount in mounts:
                if not mount.target:
                    continue
                target = resolve_in_root(mnt, mount.target)
                if os.path.lexists(target):
                    continue
                first = target
                while not os.path.lexists(first.parent):
                    first = first.parent
                stubs.append((str(target.relative_to(mnt)), str(first.relative_to(mnt))))
        return stubs

    def _run_mount(
        self,
        ins: Instruction,
        mount: RunMount,
        src_state: _State | None,
        stack: contextlib.ExitStack[bool | None],
    ) -> tuple[Volume | None, str | None]:
        """What one `RUN --mount` binds (a Volume), or the `VAR=secret` it adds."""
        from runtime.state import Volume

        self.layer_count += 1
        scratch = self.staging / f"runmount{self.layer_count}"
        if mount.kind == "tmpfs":
            scratch.mkdir(mode=0o755)  # an empty directory of the RUN's own (deleted after)
            return Volume(str(scratch), mount.target), None
        if mount.kind == "cache":
            where = self._cache_mount_dir(mount)
            if mount.sharing == "locked":
                stack.enter_context(_flocked(where))
            return Volume(str(where), mount.target, read_only=mount.read_only), None
        if mount.kind == "secret":
            data = self.opts.secrets.get(mount.id)
            if data is None:
                return None, None  # not required (checked earlier): no mount, as BuildKit
            if mount.env:
                return None, f"{mount.env}={data.decode(errors='surrogateescape')}"
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chown(scratch, mount.uid, mount.gid)
            os.chmod(scratch, 0o400 if mount.mode is None else mount.mode)
            return Volume(str(scratch), mount.target, read_only=True), None
        # bind: a copy of the source (the context's, or a stage's or an image's), so that
        # writes of an rw mount never reach it, and .dockerignore'd files are not there
        try:
            if src_state is not None:
                src_root, _ = stack.enter_context(self._mounted(src_state))
                tree = StageRoot(src_root)
                picked: list[tuple[Source, str]] = [
                    (tree, rel) for rel in tree.select(mount.source or "/")
                ]
            else:
                picked = [(self.context, rel) for rel in self.context.select(mount.source or ".")]
            ((source, rel),) = picked
            scratch.mkdir(mode=0o755)
            copier = Copier(source, scratch, None, self.staging)
            if os.path.isdir(source.host(rel)):
                copier.copy(rel, scratch / "tree", as_dir=False, extract=False)
            else:
                copier.copy(rel, scratch / "tree", as_dir=False, extract=False)
        except (ContextError, CopyError, OSError, ValueError) as e:
            raise BuildError(
                f"{self._at(ins)}: RUN --mount source {mount.source or '.'}: {_describe_any(e)}"
            ) from None
        return Volume(str(scratch / "tree"), mount.target, read_only=mount.read_only), None

    def _cache_mount_dir(self, mount: RunMount) -> Path:
        """A cache mount's directory under the store, made on first use with its mode and
        owner; kept across builds (`strata prune` leaves it; remove it by hand)."""
        name = hashlib.sha256(mount.id.encode(errors="surrogateescape")).hexdigest()[:32]
        where = self.store.path / "build-mounts" / name
        if not where.is_dir():
            where.parent.mkdir(mode=0o700, exist_ok=True)
            tmp = where.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.mkdir(mode=0o700)
            os.chown(tmp, mount.uid, mount.gid)
            os.chmod(tmp, 0o755 if mount.mode is None else mount.mode)
            try:
                os.rename(tmp, where)
            except OSError:  # made meanwhile by another build
                os.rmdir(tmp)
        return where

    def _spec(self, state: _State) -> ImageSpec:
        from runtime.images import ImageConfig, ImageSpec

        return ImageSpec(
            ref=f"{self.where} (build)",
            layers=self._lowers(state),
            config=ImageConfig.from_oci(state.config),  # RUN gives its argv and no entrypoint
        )

    # -- COPY / ADD / WORKDIR: through a mount of the image so far

    def _lowers(self, state: _State) -> tuple[Path, ...]:
        """The image so far as union lower layers, top first."""
        return tuple(self.store.layer_path(d) for d in reversed(state.layers))

    @contextlib.contextmanager
    def _mounted(self, state: _State) -> Iterator[tuple[Path, Path]]:
        """The image so far mounted with a fresh upper: (mount point, upper)."""
        from runtime.rootfs import UnionRootfs
        from runtime.state import remove_tree
        from unionfs.config import UnionConfig

        self.layer_count += 1
        base = self.staging / f"mount{self.layer_count}"
        empty, upper, work, mnt = (base / n for n in ("empty", "upper", "work", "mnt"))
        for d in (empty, upper, work, mnt):
            d.mkdir(parents=True, mode=0o755)
        lowers = self._lowers(state) or (empty,)
        try:
            with UnionRootfs(privileged=not in_user_namespace()) as daemon:
                daemon.mount(
                    UnionConfig(lowers=lowers, upper=upper, work=work),
                    mnt,
                    log_path=base / "union.log",
                )
                daemon.wait_mounted()
                yield mnt, upper
        finally:
            with contextlib.suppress(OSError, UsageError):
                remove_tree(work)

    def _copy_args(self, ins: Instruction, state: _State) -> tuple[str, list[str], str]:
        chown = ins.flag("chown")
        chown = self._expand(ins, chown, state) if chown else ""
        if ins.exec_form is not None:
            words = [self._expand(ins, w, state) for w in ins.exec_form]
        elif ins.heredocs:  # a here-document's word stays `<<NAME`; the others are expanded
            marks = {doc.word: f"<<{doc.name}" for doc in ins.heredocs}
            words = []
            for word in raw_words(ins.args, self.escape):
                words += [marks[word]] if word in marks else self._words(ins, word, state)
        else:
            words = self._words(ins, ins.args, state)
        if len(words) < 2:
            raise BuildError(f"{self._at(ins)}: {ins.keyword} needs a source and a destination")
        sources, dest = words[:-1], words[-1]
        for source in sources:
            git = source.startswith("git@") or source.endswith(".git") or ".git#" in source
            if git and ("://" in source or source.startswith("git@")):
                raise BuildError(
                    f"{self._at(ins)}: {ins.keyword} {source}: git repositories are not supported"
                )
            if "://" in source and (ins.keyword == "COPY" or not _is_http(source)):
                what = "COPY takes no URLs (ADD does)" if ins.keyword == "COPY" else "not http(s)"
                raise BuildError(f"{self._at(ins)}: {ins.keyword} {source}: {what}")
        checksum = ins.flag("checksum")
        if checksum is not None and (len(sources) != 1 or not _is_http(sources[0])):
            raise BuildError(
                f"{self._at(ins)}: ADD --checksum takes one http(s) source, not {' '.join(sources)}"
            )
        return chown, sources, dest

    def _copy(
        self,
        ins: Instruction,
        state: _State,
        chown: str,
        selected: Sequence[tuple[Source, str]],
        dest: str,
    ) -> tuple[_State, str]:
        """Copy `selected` to `dest` through a mount of the image so far, or with `--link`
        into an empty one: BuildKit's linked layer, which does not depend on the layers below
        (symlinks of the image in the destination path are not followed)."""
        workdir = str(state.inner.get("WorkingDir") or "/")
        as_dir = dest.endswith(("/", "/.")) or dest in (".", "/")
        if len(selected) > 1 and not as_dir:
            raise BuildError(
                f"{self._at(ins)}: {ins.keyword}: with more than one source file the destination"
                " must be a directory and end with a /"
            )
        dest_path = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        mode = self._chmod(ins, state)
        link = _linked(ins)
        owner = None
        if chown and link and not _numeric_owner(chown):  # names are the image's users
            with self._mounted(state) as (mnt, _upper):
                owner = self._owner(ins, mnt, chown)
        onto = _State({"config": {}}, []) if link else state
        with self._mounted(onto) as (mnt, upper):
            if chown and owner is None:
                owner = self._owner(ins, mnt, chown)
            self._copy_into(ins, mnt, selected, dest_path, owner, mode, as_dir=as_dir)
        return state, self._add_layer(upper, self._lowers(onto))

    def _owner(self, ins: Instruction, root: Path, chown: str) -> tuple[int, int]:
        owner = resolve_chown(root, chown)
        if owner is None:
            raise BuildError(f"{self._at(ins)}: {ins.keyword} --chown={chown}: no such user")
        return owner

    def _chmod(self, ins: Instruction, state: _State) -> int | None:
        given = ins.flag("chmod")
        if given is None:
            return None
        value = self._expand(ins, given, state)
        if not value or len(value) > 4 or any(c not in "01234567" for c in value):
            raise BuildError(
                f"{self._at(ins)}: {ins.keyword} --chmod={given}: expected an octal mode (0755)"
            )
        return int(value, 8)

    def _copy_into(
        self,
        ins: Instruction,
        mnt: Path,
        selected: Sequence[tuple[Source, str]],
        dest_path: str,
        owner: tuple[int, int] | None,
        mode: int | None,
        *,
        as_dir: bool,
    ) -> None:
        from runtime.mounts import resolve_in_root

        try:
            target = resolve_in_root(mnt, dest_path)
            for source, rel in selected:
                extract = ins.keyword == "ADD" and source is self.context
                copier = Copier(source, mnt, owner, self.staging, mode=mode)
                copier.copy(rel, target, as_dir=as_dir, extract=extract)
        except (OSError, CopyError) as e:
            raise BuildError(f"{self._at(ins)}: {ins.keyword} failed: {_describe(e)}") from None

    def _workdir(self, state: _State, path: str) -> tuple[_State, str | None]:
        from runtime.mounts import resolve_in_root

        new = _State(copy.deepcopy(state.config), list(state.layers))
        new.inner["WorkingDir"] = path
        with self._mounted(state) as (mnt, upper):
            target = resolve_in_root(mnt, path)
            if not target.is_dir():
                make_dirs(target, mnt, None)
            changed = bool(os.listdir(upper))
        return new, (self._add_layer(upper, self._lowers(state)) if changed else None)

    # -- metadata-only instructions

    def _metadata(self, ins: Instruction, state: _State) -> tuple[_State, str]:
        """The new state and the history text of ENV USER CMD ENTRYPOINT LABEL MAINTAINER
        EXPOSE SHELL STOPSIGNAL."""
        new = _State(copy.deepcopy(state.config), list(state.layers))
        inner = new.inner
        kw = ins.keyword
        if kw == "ENV":
            pairs = self._pairs(ins, state, legacy=True)
            env = [str(e) for e in inner.get("Env") or []]  # type: ignore[attr-defined]
            for name, value in pairs:
                env = [e for e in env if e.partition("=")[0] != name] + [f"{name}={value}"]
            inner["Env"] = env
            return new, "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
        if kw == "LABEL":
            pairs = self._pairs(ins, state, legacy=True)
            labels = dict(inner.get("Labels") or {})  # type: ignore[call-overload]
            labels.update(pairs)
            inner["Labels"] = labels
            return new, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
        if kw == "USER":
            user = self._expand(ins, ins.args, state)
            inner["User"] = user
            return new, f"USER {user}"
        if kw in ("CMD", "ENTRYPOINT"):
            if ins.exec_form is not None:
                argv = list(ins.exec_form)
            elif ins.args:
                argv = [*_shell(state), ins.args]
            else:
                argv = []
            if kw == "CMD":
                inner["Cmd"] = argv
                self.cmd_set = True
            else:
                inner["Entrypoint"] = argv
                if not self.cmd_set:  # as Docker: an inherited CMD does not suit a new ENTRYPOINT
                    inner.pop("Cmd", None)
            return new, f"{kw} {json.dumps(argv)}"
        if kw == "SHELL":
            if not ins.exec_form:
                raise BuildError(f'{self._at(ins)}: SHELL needs the JSON form ["shell", "-c"]')
            inner["Shell"] = list(ins.exec_form)
            return new, f"SHELL {json.dumps(list(ins.exec_form))}"
        if kw == "STOPSIGNAL":
            name = self._expand(ins, ins.args, state)
            if not _signal_ok(name):
                raise BuildError(f"{self._at(ins)}: STOPSIGNAL {name}: not a signal")
            inner["StopSignal"] = name
            return new, f"STOPSIGNAL {name}"
        if kw == "MAINTAINER":
            new.config["author"] = ins.args
            return new, f"MAINTAINER {ins.args}"
        if kw == "EXPOSE":
            ports = dict(inner.get("ExposedPorts") or {})  # type: ignore[call-overload]
            words = self._words(ins, ins.args, state)
            for word in words:
                for port in _ports(word):
                    ports[port] = {}
                if not _ports(word):
                    raise BuildError(f"{self._at(ins)}: EXPOSE {word}: not PORT[-PORT][/PROTO]")
            inner["ExposedPorts"] = ports
            return new, f"EXPOSE {' '.join(words)}"
        if kw == "VOLUME":
            if ins.exec_form is not None:
                paths = [self._expand(ins, w, state) for w in ins.exec_form]
            else:
                paths = self._words(ins, ins.args, state)
            if not paths or not all(paths):
                raise BuildError(f"{self._at(ins)}: VOLUME needs a path")
            volumes = dict(inner.get("Volumes") or {})  # type: ignore[call-overload]
            volumes.update({path: {} for path in paths})
            inner["Volumes"] = volumes
            return new, f"VOLUME {json.dumps(paths)}"
        if kw == "HEALTHCHECK":
            check = self._healthcheck(ins, state)
            inner["Healthcheck"] = check
            return new, f"HEALTHCHECK {json.dumps(check, sort_keys=True)}"
        if kw == "ONBUILD":
            triggers = [str(t) for t in inner.get("OnBuild") or []]  # type: ignore[attr-defined]
            inner["OnBuild"] = [*triggers, ins.args]
            return new, f"ONBUILD {ins.args}"
        raise AssertionError(f"unchecked instruction {kw}")  # check_dockerfile() refused it

    def _healthcheck(self, ins: Instruction, state: _State) -> dict[str, object]:
        """HEALTHCHECK [--interval= --timeout= --start-period= --start-interval= --retries=]
        CMD ... | NONE, as Docker records it (durations in nanoseconds, unset ones left out)."""
        from runtime.logshow import go_duration

        head, _, rest = ins.args.partition(" ")
        if head.upper() == "NONE":
            if rest.strip() or ins.flags:
                raise BuildError(f"{self._at(ins)}: HEALTHCHECK NONE takes no arguments or flags")
            return {"Test": ["NONE"]}
        rest = rest.strip()
        if head.upper() != "CMD" or not rest:
            raise BuildError(f"{self._at(ins)}: HEALTHCHECK: expected CMD command or NONE")
        test: list[str] = ["CMD-SHELL", rest]
        if rest.startswith("["):
            with contextlib.suppress(ValueError):
                value = json.loads(rest)
                if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                    test = ["CMD", *value]
        check: dict[str, object] = {"Test": test}
        for flag, key in _HEALTH_DURATIONS.items():
            given = ins.flag(flag)
            if given is None:
                continue
            ns = go_duration(self._expand(ins, given, state))
            if ns is None or (0 < ns < 1_000_000):
                raise BuildError(
                    f"{self._at(ins)}: HEALTHCHECK --{flag}={given}: expected a duration of"
                    " at least 1ms, such as 30s or 1m30s"
                )
            if ns:
                check[key] = ns
        retries = ins.flag("retries")
        if retries is not None:
            value = self._expand(ins, retries, state)
            if not value.isdigit():
                raise BuildError(f"{self._at(ins)}: HEALTHCHECK --retries={retries}: not a count")
            if int(value):
                check["Retries"] = int(value)
        return check

    def _pairs(self, ins: Instruction, state: _State, *, legacy: bool) -> list[tuple[str, str]]:
        try:
            return name_values(ins.args, self._env(state), self.escape, legacy=legacy)
        except DockerfileError as e:
            raise BuildError(f"{self._at(ins)}: {ins.keyword}: {_message(e)}") from None


def _message(e: DockerfileError) -> str:
    text = str(e)
    return text.split(": ", 1)[1] if e.line and ": " in text else text


def _describe(e: Exception) -> str:
    if isinstance(e, OSError):
        name = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
        return f"{name}{e.strerror or e}"
    return str(e)


def _linked(ins: Instruction) -> bool:
    """COPY/ADD --link (or --link=true)."""
    return ins.has_flag("link") and ins.flag("link") not in ("false", "0")


def _is_http(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _mount_text(mount: RunMount) -> str:
    """A mount as the history shows it: what differs from the defaults."""
    shown = {k: v for k, v in mount.key().items() if v not in (False, 0) or k == "mode"}
    return ",".join(f"{k}={'true' if v is True else v}" for k, v in shown.items())


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """An exclusive flock(2) on a directory while a RUN uses it (`sharing=locked`)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stubs(upper: Path, stubs: Sequence[tuple[str, str]]) -> None:
    """Take the mount points the runtime made for RUN's mounts out of the upper directory:
    the target, if it is still an empty directory or an empty file, then its parents up to
    the first that the image did not have, while they are empty."""
    for target, first in stubs:
        path = upper / target
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(path)
            else:
                continue
        except OSError:
            continue
        while path != upper / first and path.parent != upper:
            path = path.parent
            try:
                os.rmdir(path)
            except OSError:
                break


def _numeric_owner(chown: str) -> bool:
    return all(part.isdigit() for part in chown.split(":"))


def _describe_any(e: Exception) -> str:
    return _describe(e) if isinstance(e, OSError) else str(e)


def _shell(state: _State) -> list[str]:
    """The shell of shell-form RUN, CMD and ENTRYPOINT: SHELL's (also the base image's), or
    `/bin/sh -c`."""
    shell = state.inner.get("Shell")
    if isinstance(shell, list) and shell:
        return [str(s) for s in shell]
    return ["/bin/sh", "-c"]


_HEALTH_DURATIONS = {
    "interval": "Interval",
    "timeout": "Timeout",
    "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}


def _signal_ok(name: str) -> bool:
    """STOPSIGNAL's argument: a signal name (with or without SIG) or number, as Docker takes."""
    import signal

    if name.isdigit():
        return 0 < int(name) < signal.NSIG
    upper = name.upper()
    return hasattr(signal, upper if upper.startswith("SIG") else f"SIG{upper}")


def _ports(word: str) -> list[str]:
    port, _, proto = word.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        return []
    low, _, high = port.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        return []
    first, last = int(low), int(high or low)
    if not 0 < first <= last <= 65535:
        return []
    return [f"{p}/{proto}" for p in range(first, last + 1)]


def build(
    store: ImageStore, opts: BuildOptions, say: Callable[[str], None] = print
) -> ImageRecord | None:
    """`strata build`: see the module doc. None when `opts.output` exported the files instead
    of storing an image."""
    return Builder(store, opts, say).build()
