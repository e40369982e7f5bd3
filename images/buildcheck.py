"""The Dockerfile checked before a build runs anything: an instruction or flag `strata build`
does not support fails with its line number, and nothing is stored."""

from __future__ import annotations

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
    }
)
FLAGS: Final = {"COPY": {"chown"}, "ADD": {"chown"}}
BUILD_FAILED: Final = 1


class BuildError(UsageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, BUILD_FAILED)


def check_dockerfile(instructions: tuple[Instruction, ...], where: str) -> int:
    """The index of the FROM; BuildError naming the line of anything this builder refuses."""
    from_index = -1
    for i, ins in enumerate(instructions):
        at = f"{where}:{ins.line}"
        if ins.keyword not in SUPPORTED:
            raise BuildError(f"{at}: {ins.keyword} is not supported by strata build")
        if ins.keyword == "FROM":
            if from_index >= 0:
                raise BuildError(f"{at}: FROM: multi-stage builds are not supported")
            from_index = i
        elif from_index < 0 and ins.keyword != "ARG":
            raise BuildError(f"{at}: {ins.keyword} before FROM (only ARG may come first)")
        allowed = FLAGS.get(ins.keyword, set())
        for name, _value in ins.flags:
            if name == "from" and ins.keyword == "COPY":
                raise BuildError(f"{at}: COPY --from (multi-stage) is not supported")
            if name not in allowed:
                raise BuildError(f"{at}: {ins.keyword} --{name} is not supported")
        if not ins.args and ins.keyword not in ("CMD", "ENTRYPOINT"):
            raise BuildError(f"{at}: {ins.keyword} needs arguments")
    if from_index < 0:
        raise BuildError(f"{where}: no FROM instruction")
    return from_index
