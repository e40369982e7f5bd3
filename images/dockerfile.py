"""A Dockerfile parser and Docker's word processing (variable substitution, quotes). Pure: no I/O.

What is read as Docker's parser reads it:

- parser directives (`# escape=`, `# syntax=`, `# check=`, any case) only at the very top, before any
  comment, blank line or instruction; the escape character is `\\` (default) or `` ` ``;
- comment lines (`#` after optional whitespace) are dropped everywhere, also in the middle of a
  continued instruction, as are empty lines inside a continuation;
- a line whose last non-blank character is the escape character continues on the next one (the
  escape character is removed, the lines are joined as they are);
- the keyword is case-insensitive; leading `--name=value` flags are split off;
- RUN, CMD, ENTRYPOINT, COPY and ADD arguments that are a JSON array of strings are the exec
  form, anything else the shell form;
- here-documents (BuildKit's Dockerfile 1.4 syntax) in RUN, COPY and ADD: each word `<<NAME`,
  `<<-NAME`, `<<'NAME'` or `<<"NAME"` of the instruction takes the lines after it, up to a line
  that is NAME, as its body (in order, one body after another); `-` strips leading tabs from
  the body and the end line, and a quoted NAME turns off variable expansion (for COPY/ADD).

`expand()` and `expand_words()` are Docker's `ProcessWord`/`ProcessWords`: `$VAR`, `${VAR}`,
`${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, single quotes (literal), double
quotes (expanding), the escape character outside single quotes. Which instructions get it is the
builder's business (`images.build`), as in Docker: not RUN, CMD and ENTRYPOINT, whose shell does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

_DIRECTIVE: Final = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_DIRECTIVES: Final = frozenset({"escape", "syntax", "check"})
_FLAG: Final = re.compile(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(\S*))?")
_JSON_FORMS: Final = frozenset({"RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "SHELL", "VOLUME"})
_HEREDOC_KEYWORDS: Final = frozenset({"RUN", "COPY", "ADD"})
_HEREDOC: Final = re.compile(r"<<(-?)(['\"]?)([A-Za-z0-9_.-]+)\2")
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class DockerfileError(Exception):
    """A Dockerfile that cannot be parsed or processed; `line` is 1-based (0: none)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Heredoc:
    """The body of one `<<NAME` word of an instruction."""

    word: str  # as written: <<EOF, <<-EOF, <<'EOF'
    name: str
    body: str  # the lines between, each with its newline; tabs stripped for <<-
    raw: str  # the lines between and the end line as written (the shell gets them so)
    expand: bool  # NAME was not quoted


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction: where it starts, its keyword (upper case), its flags and arguments."""

    line: int
    keyword: str
    args: str  # the arguments after the flags, continuations joined, ends stripped
    flags: tuple[tuple[str, str | None], ...] = ()
    exec_form: tuple[str, ...] | None = None  # the JSON array, when given as one
    heredocs: tuple[Heredoc, ...] = ()

    def has_flag(self, name: str) -> bool:
        return any(key == name for key, _value in self.flags)

    def flag(self, name: str) -> str | None:
        for key, value in self.flags:
            if key == name:
                return value
        return None

    def __str__(self) -> str:
        flags = "".join(f"--{k}={v} " if v is not None else f"--{k} " for k, v in self.flags)
        return f"{self.keyword} {flags}{self.args}".rstrip()


@dataclass(frozen=True, slots=True)
class Dockerfile:
    escape: str
    instructions: tuple[Instruction, ...]


def parse(text: str) -> Dockerfile:
    """The instructions of a Dockerfile (DockerfileError on an instruction without a keyword)."""
    lines = text.splitlines()
    escape = "\\"
    index = 0
    # directives: only a leading run of `# key=value` lines
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index])
        if match is None:
            break
        key, value = match.group(1).lower(), match.group(2)
        if key not in _DIRECTIVES:
            break  # an unknown directive is a comment, and ends the directives
        if key == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(index + 1, f"invalid escape character {value!r}")
            escape = value
        index += 1
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    found: list[Instruction] = []
    while index < len(lines):
        start = index
        line = lines[index].lstrip()
        index += 1
        if not line or line.startswith("#"):
            continue
        joined = ""
        while True:
            match = continuation.search(line)
            if match is None:
                joined += line
                break
            joined += line[: match.start()]
            # the next line that is neither empty nor a comment continues it
            while index < len(lines) and (
                not lines[index].strip() or lines[index].lstrip().startswith("#")
            ):
                index += 1
            if index == len(lines):
                break
            line = lines[index]
            index += 1
        ins = instruction(start + 1, joined.strip())
        if ins.keyword in _HEREDOC_KEYWORDS and ins.exec_form is None and "<<" in ins.args:
            ins, index = _with_heredocs(ins, lines, index, escape)
        found.append(ins)
    return Dockerfile(escape=escape, instructions=tuple(found))


def _with_heredocs(
    ins: Instruction, lines: list[str], index: int, escape: str
) -> tuple[Instruction, int]:
    """ins with the bodies of its `<<NAME` words, read from lines[index:]; the next index."""
    docs: list[Heredoc] = []
    for word in raw_words(ins.args, escape):
        match = _HEREDOC.fullmatch(word)
        if match is None:
            continue
        chomp, quote, name = match.group(1) == "-", match.group(2), match.group(3)
        body: list[str] = []
        raw: list[str] = []
        while True:
            if index == len(lines):
                raise DockerfileError(ins.line, f"{ins.keyword}: here-document {word} has no end")
            line = lines[index]
            index += 1
            raw.append(line + "\n")
            if (line.lstrip("\t") if chomp else line) == name:
                break
            body.append((line.lstrip("\t") if chomp else line) + "\n")
        docs.append(Heredoc(word, name, "".join(body), "".join(raw), expand=not quote))
    if not docs:
        return ins, index
    return Instruction(ins.line, ins.keyword, ins.args, ins.flags, None, tuple(docs)), index


def instruction(line: int, text: str) -> Instruction:
    """One instruction's text (continuations joined): keyword, flags, exec form."""
    keyword, _, rest = text.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = f"{more} {rest}"
    keyword = keyword.upper()
    if not re.fullmatch(r"[A-Z]+", keyword):
        raise DockerfileError(line, f"{keyword!r} is not an instruction")
    rest = rest.strip()
    flags: list[tuple[str, str | None]] = []
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        match = _FLAG.fullmatch(word.split("\t")[0])
        if match is None:
            break
        flags.append((match.group(1).lower(), match.group(2)))
        rest = after.strip()
    exec_form = None
    if keyword in _JSON_FORMS and rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            exec_form = tuple(value)
    return Instruction(line, keyword, rest, tuple(flags), exec_form)


# ---------------------------------------------------------------------------------------------
# word processing


class _Words:
    """Docker's shell-word lexer over one string (see the module doc)."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str, raw: bool = False) -> None:
        self.text, self.env, self.escape = text, env, escape
        self.raw = raw  # a here-document's body: variables only, quotes are text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def words(self, *, split: bool) -> list[str]:
        """The words of the text (one word, spaces kept, unless `split`)."""
        words: list[str] = []
        word = ""
        quoted = False  # the current word had quotes: keep it even if empty
        while self.pos < len(self.text):
            ch = self.next()
            if split and ch in " \t\n":
                if word or quoted:
                    words.append(word)
                word, quoted = "", False
            elif self.raw and ch != "$":
                if ch == self.escape and self.peek() == "$":
                    ch = self.next()
                word += ch
            elif ch == "'":
                quoted = True
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise DockerfileError(0, f"unterminated single quote in {self.text!r}")
                word += self.text[self.pos : end]
                self.pos = end + 1
            elif ch == '"':
                quoted = True
                word += self.double_quoted()
            elif ch == self.escape:
                word += self.next()
            elif ch == "$":
                word += self.variable()
            else:
                word += ch
        if word or quoted:
            words.append(word)
        return words

    def double_quoted(self) -> str:
        out = ""
        while True:
            if self.pos >= len(self.text):
                raise DockerfileError(0, f"unterminated double quote in {self.text!r}")
            ch = self.next()
            if ch == '"':
                return out
            if ch == self.escape:
                nxt = self.peek()
                if nxt in ('"', "$", self.escape):
                    out += self.next()
                else:
                    out += ch
            elif ch == "$":
                out += self.variable()
            else:
                out += ch

    def name(self) -> str:
        start = self.pos
        while self.peek() and self.peek() in _NAME_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def variable(self) -> str:
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.pos += 1
        name = self.name()
        if not name:
            raise DockerfileError(0, f"bad substitution in {self.text!r}")
        ch = self.next()
        if ch == "}":
            return self.env.get(name, "")
        colon = ch == ":"
        if colon:
            ch = self.next()
        if ch not in ("-", "+"):
            raise DockerfileError(0, f"unsupported modifier in ${{{name}...}} in {self.text!r}")
        word = self.braced_word()
        value = self.env.get(name)
        present = value is not None and (value != "" or not colon)
        if ch == "-":
            return value if present and value is not None else word
        return word if present else ""

    def braced_word(self) -> str:
        """The word of `${NAME:-word}` up to the closing brace (expanded)."""
        out = ""
        while True:
            ch = self.next()
            if not ch:
                raise DockerfileError(0, f"missing '}}' in {self.text!r}")
            if ch == "}":
                return out
            if ch == self.escape:
                out += self.next()
            elif ch == "$":
                out += self.variable()
            elif ch == "'":
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise DockerfileError(0, f"unterminated single quote in {self.text!r}")
                out += self.text[self.pos : end]
                self.pos = end + 1
            elif ch == '"':
                out += self.double_quoted()
            else:
                out += ch


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word: variables substituted, quotes and escapes removed (spaces kept)."""
    words = _Words(text, env, escape).words(split=False)
    return words[0] if words else ""


def expand_heredoc(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """A COPY here-document's body with its variables substituted; quotes stay text and only
    an escaped `$` loses its escape (BuildKit's raw-quotes word processing)."""
    words = _Words(text, env, escape, raw=True).words(split=False)
    return words[0] if words else ""


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Whitespace-separated words, each expanded; quotes keep spaces inside one word."""
    return _Words(text, env, escape).words(split=True)


def raw_words(text: str, escape: str) -> list[str]:
    """Split on whitespace outside quotes, keeping quotes and escapes (Docker's parseWords)."""
    words: list[str] = []
    word = ""
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == escape and quote != "'" and i + 1 < len(text):
            word += ch + text[i + 1]
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in " \t\n":
            if word:
                words.append(word)
            word = ""
            i += 1
            continue
        word += ch
        i += 1
    if word:
        words.append(word)
    return words


def name_values(
    text: str, env: Mapping[str, str], escape: str, *, legacy: bool = True
) -> list[tuple[str, str]]:
    """The `NAME=value ...` pairs of ENV or LABEL (values expanded); with `legacy`, the old
    `NAME value with spaces` form too (DockerfileError if neither)."""
    words = raw_words(text, escape)
    if not words:
        raise DockerfileError(0, "needs at least one argument")
    if "=" not in words[0]:
        if not legacy:
            raise DockerfileError(0, f"{words[0]!r}: expected NAME=value")
        name = words[0]
        rest = text[text.index(name) + len(name) :].strip()
        if not rest:
            raise DockerfileError(0, f"{name} needs a value (NAME=value or NAME value)")
        return [(name, expand(rest, env, escape))]
    pairs = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(0, f"{word!r}: expected NAME=value")
        name = expand(name, env, escape)
        if not name:
            raise DockerfileError(0, f"{word!r}: empty name")
        pairs.append((name, expand(value, env, escape)))
    return pairs
