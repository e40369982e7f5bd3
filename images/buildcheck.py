"""The Dockerfile checked before a build runs anything: an instruction or flag `strata build`
does not support fails with its line number, and nothing is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from unionfs.errors import UsageError

from .dockerfile import Instruction

SUPPORTED: Final = frozenset(
    {
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "CMD",
        "ENTRYPOINT",
        "LABEL",
        "MAINTAINER",
        "EXPOSE",
        "SHELL",
        "STOPSIGNAL",
        "VOLUME",
        "HEALTHCHECK",
        "ONBUILD",
    }
)
FLAGS: Final = {
    "COPY": {"chown", "from", "chmod", "link", "parents", "exclude"},
    "ADD": {"chown", "chmod", "link", "checksum", "exclude"},
    "FROM": {"platform"},
    "RUN": {"mount", "network", "security"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
_BOOLEAN_FLAGS: Final = frozenset({"link", "parents"})  # `--link` alone means --link=true
# What ONBUILD may not carry (Docker's rule).
_NOT_ONBUILD: Final = frozenset({"ONBUILD", "FROM", "MAINTAINER"})
BUILD_FAILED: Final = 1
# Docker's rule for a stage name (`FROM IMAGE AS NAME`), checked case-insensitively.
_STAGE_NAME: Final = re.compile(r"[a-z][a-z0-9._-]*")


class BuildError(UsageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, BUILD_FAILED)


@dataclass(frozen=True, slots=True)
class Stage:
    """One FROM and the instructions up to the next: `index` counts stages from 0; `first`
    is the step number of its FROM (steps count every instruction of the file from 1)."""

    index: int
    name: str | None  # lower-cased
    first: int
    instructions: tuple[Instruction, ...]  # the FROM first


@dataclass(frozen=True, slots=True)
class Plan:
    prelude: tuple[Instruction, ...]  # the ARGs before the first FROM
    stages: tuple[Stage, ...]
    total: int  # instructions in the file

    def stage(self, ref: str, before: int) -> Stage | None:
        """The stage that `ref` (a name or an index) names among the first `before`."""
        if ref.isdigit():
            index = int(ref)
            return self.stages[index] if index < before else None
        for stage in self.stages[:before]:
            if stage.name == ref.lower():
                return stage
        return None


def check_dockerfile(instructions: tuple[Instruction, ...], where: str) -> Plan:
    """The stages of the Dockerfile; BuildError naming the line of anything this builder
    refuses."""
    prelude: list[Instruction] = []
    stages: list[tuple[int, str | None, list[Instruction]]] = []
    for i, ins in enumerate(instructions):
        at = f"{where}:{ins.line}"
        if ins.keyword not in SUPPORTED:
            raise BuildError(f"{at}: {ins.keyword} is not supported by strata build")
        if ins.keyword == "FROM":
            stages.append((i + 1, _stage_name(ins, at, [s[1] for s in stages]), [ins]))
        elif not stages:
            if ins.keyword != "ARG":
                raise BuildError(f"{at}: {ins.keyword} before FROM (only ARG may come first)")
            prelude.append(ins)
        else:
            stages[-1][2].append(ins)
        allowed = FLAGS.get(ins.keyword, set())
        for name, value in ins.flags:
            if name not in allowed:
                raise BuildError(f"{at}: {ins.keyword} --{name} is not supported")
            if not value and name not in _BOOLEAN_FLAGS:
                raise BuildError(f"{at}: {ins.keyword} --{name} needs a value (--{name}=...)")
            if name in _BOOLEAN_FLAGS and value not in (None, "true", "false", "1", "0"):
                raise BuildError(f"{at}: {ins.keyword} --{name}={value}: expected true or false")
        if not ins.args and ins.keyword not in ("CMD", "ENTRYPOINT"):
            raise BuildError(f"{at}: {ins.keyword} needs arguments")
        if ins.keyword == "ONBUILD":
            check_trigger(ins.args, at)
    if not stages:
        raise BuildError(f"{where}: no FROM instruction")
    return Plan(
        prelude=tuple(prelude),
        stages=tuple(
            Stage(n, name, first, tuple(body)) for n, (first, name, body) in enumerate(stages)
        ),
        total=len(instructions),
    )


def check_trigger(text: str, at: str) -> Instruction:
    """An ONBUILD trigger's instruction (BuildError if Docker would refuse it)."""
    from .dockerfile import DockerfileError, instruction

    try:
        ins = instruction(0, text)
    except DockerfileError as e:
        raise BuildError(f"{at}: ONBUILD {text}: {e}") from None
    if ins.keyword in _NOT_ONBUILD:
        raise BuildError(f"{at}: ONBUILD {ins.keyword} is not allowed")
    if ins.keyword not in SUPPORTED:
        raise BuildError(f"{at}: ONBUILD {ins.keyword} is not supported by strata build")
    for name, _value in ins.flags:
        if name not in FLAGS.get(ins.keyword, set()):
            raise BuildError(f"{at}: ONBUILD {ins.keyword} --{name} is not supported")
    return ins


def _stage_name(ins: Instruction, at: str, earlier: list[str | None]) -> str | None:
    words = ins.args.split()
    if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
        raise BuildError(f"{at}: FROM IMAGE [AS NAME] expected")
    if len(words) == 1:
        return None
    name = words[2].lower()
    if not _STAGE_NAME.fullmatch(name):
        raise BuildError(f"{at}: FROM ... AS {words[2]}: invalid stage name")
    if name in earlier:
        raise BuildError(f"{at}: FROM ... AS {words[2]}: a stage of that name already exists")
    return name
