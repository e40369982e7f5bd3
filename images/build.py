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
import hashlib
import json
import os
import posixpath
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unionfs.errors import UsageError

from .buildcheck import BuildError, Plan, Stage, check_dockerfile
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
from .store import ImageRecord, ImageStore, normalize_ref

if TYPE_CHECKING:
    from runtime.images import ImageSpec


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


@dataclass(slots=True)
class _State:
    """The image as built so far: its whole config (OCI image config) and layers, base first."""

    config: dict[str, object]
    layers: list[str]

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

    def build(self) -> ImageRecord:
        if os.geteuid() != 0:
            raise BuildError("strata build needs root (RUN and COPY mount the image's union)")
        if not self.opts.context.is_dir():
            raise BuildError(f"{self.opts.context}: the build context is not a directory")
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
            self.say(f" ---> {state.key()[:12]}")
            for step, ins in enumerate(stage.instructions[1:], stage.first + 1):
                self.say(f"Step {step}/{total} : {ins}")
                state = self._step(ins, state, stage)
        finally:
            self.args, self.cmd_set = saved
        self.results[stage.index] = state
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
            state = _State(config=copy.deepcopy(rec.config), layers=list(rec.layers))
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
            shown = " ".join(argv)
            if args:
                shown = f"|{len(args)} {' '.join(args)} {shown}"
            key_text = _canonical({"RUN": argv, "args": args, "script": script}).decode()
            return self._cached(
                ins,
                state,
                key_text,
                f"RUN {shown}",
                lambda: self._run(ins, state, argv, args, script),
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
        src_state: _State | None = None
        if from_ref:
            from_ref = self._expand(ins, from_ref, state)
            src_state = self._from_state(ins, from_ref, stage)
            key["from"] = src_state.key()
            shown = f"{kw} --from={from_ref} "
        else:
            contents = {w: self._heredoc_text(ins, docs[w], state) for w in sources if w in docs}
            try:
                picked = [p for s in sources if s not in docs for p in self.context.select(s)]
                key["src"] = self.context.digest(picked)
            except ContextError as e:
                raise BuildError(f"{self._at(ins)}: {kw} failed: {e}") from None
            key["heredocs"] = contents
            shown = f"{kw} "
        shown += f"{'--chown=' + chown + ' ' if chown else ''}{' '.join(sources)} {dest}"

        def make() -> tuple[_State, str]:
            if src_state is None:
                try:
                    picked = self._context_sources(sources, docs, contents)
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
        self, sources: list[str], docs: Mapping[str, Heredoc], contents: Mapping[str, str]
    ) -> list[tuple[Source, str]]:
        """The context paths and here-document files a COPY/ADD copies, in order."""
        picked: list[tuple[Source, str]] = []
        for source in sources:
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
                self.say(f" ---> {hit.key()[:12]}")
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
        self.say(f" ---> {new.key()[:12]}")
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
    ) -> tuple[_State, str]:
        from runtime.create import CreateRequest, create, union_config
        from runtime.lifecycle import remove, run_attached
        from runtime.state import Volume

        root = self.store.state
        volumes: tuple[Volume, ...] = ()
        if script is not None:  # bound read-only below /dev (a tmpfs): not in the layer
            self.layer_count += 1
            path = self.staging / f"script{self.layer_count}"
            path.write_text(script, errors="surrogateescape")
            os.chmod(path, 0o755)
            volumes = (Volume(str(path), argv[0], read_only=True),)
        req = CreateRequest(
            image=self._spec(state),
            argv=tuple(argv),
            entrypoint=(),
            env=tuple(args),
            network="host",
            volumes=volumes,
            rootless=False,
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
            return state, self._add_layer(cdir.sub("upper"), union_config(cdir).lowers)
        finally:
            remove(root, cdir, force=True)

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
            with UnionRootfs(privileged=True) as daemon:
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
            if "://" in source or source.startswith("git@"):
                raise BuildError(f"{self._at(ins)}: {ins.keyword} {source}: URLs are not supported")
        return chown, sources, dest

    def _copy(
        self,
        ins: Instruction,
        state: _State,
        chown: str,
        selected: Sequence[tuple[Source, str]],
        dest: str,
    ) -> tuple[_State, str]:
        from runtime.mounts import resolve_in_root

        workdir = str(state.inner.get("WorkingDir") or "/")
        as_dir = dest.endswith(("/", "/.")) or dest in (".", "/")
        if len(selected) > 1 and not as_dir:
            raise BuildError(
                f"{self._at(ins)}: {ins.keyword}: with more than one source file the destination"
                " must be a directory and end with a /"
            )
        dest_path = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        with self._mounted(state) as (mnt, upper):
            owner = resolve_chown(mnt, chown) if chown else None
            if chown and owner is None:
                raise BuildError(f"{self._at(ins)}: {ins.keyword} --chown={chown}: no such user")
            try:
                target = resolve_in_root(mnt, dest_path)
                for source, rel in selected:
                    extract = ins.keyword == "ADD" and source is self.context
                    copier = Copier(source, mnt, owner, self.staging)
                    copier.copy(rel, target, as_dir=as_dir, extract=extract)
            except (OSError, CopyError) as e:
                raise BuildError(f"{self._at(ins)}: {ins.keyword} failed: {_describe(e)}") from None
        return state, self._add_layer(upper, self._lowers(state))

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
        raise AssertionError(f"unchecked instruction {kw}")  # check_dockerfile() refused it

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


def _describe_any(e: Exception) -> str:
    return _describe(e) if isinstance(e, OSError) else str(e)


def _shell(state: _State) -> list[str]:
    """The shell of shell-form RUN, CMD and ENTRYPOINT: SHELL's (also the base image's), or
    `/bin/sh -c`."""
    shell = state.inner.get("Shell")
    if isinstance(shell, list) and shell:
        return [str(s) for s in shell]
    return ["/bin/sh", "-c"]


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


def build(store: ImageStore, opts: BuildOptions, say: Callable[[str], None] = print) -> ImageRecord:
    """`strata build`: see the module doc."""
    return Builder(store, opts, say).build()
