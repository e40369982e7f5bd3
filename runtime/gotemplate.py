"""Go's text/template, as far as `--format` needs it, and docker's output of a formatted list.

docker's and podman's `--format` take Go templates (`{{.ID}}`, `table {{.ID}}\\t{{.Image}}`,
`{{json .Config.Env}}`, `{{range .Mounts}}{{.Source}} {{end}}`). No well-kept Python package
implements text/template (the one on PyPI wraps Go through CGo, at version 0.0.2), so this is a
small evaluator of its own, the only one: every command with `--format` goes through `render`
(lists) or `Template.execute` (inspect).

What it understands: text, `{{- ... -}}` trimming, comments; pipelines with `|`; fields and
chains (`.A.B`, `$x.A`, `(pipe).A`), `$` and variables (`$x := ...`, `$x = ...`); string, raw
string, number, `true`/`false`/`nil` literals; `if`/`else if`/`else`, `range` (lists and maps, with
`$i, $v :=`, `else`), `with`/`else`; the functions of Go (and, or, not, len, index, slice, print,
printf, println, eq, ne, lt, le, gt, ge, urlquery) and of docker's CLI (json, join, split, lower,
upper, title, pad, truncate). Values print as Go's fmt does (`[a b]`, `map[k:v]`, `true`,
`<no value>` for a missing map key). Left out: `define`/`template`/`block`, `break`/`continue`,
character constants, `call`, `html`, `js`.

Errors have Go's words behind docker's prefix, e.g. `template parsing error: template: :1:2:
executing "" at <.Foo>: can't evaluate field Foo in type ContainerContext`, and exit 125.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from unionfs.errors import UsageError


class TemplateError(UsageError):
    """A template that does not parse or does not execute (docker's one line)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"template parsing error: template: {message}", 125)


class Fields(dict[str, object]):
    """One row of a list command (docker's ContainerContext, ImageContext, ...): a field it
    does not have is an error naming the type, as Go's for a struct; a plain dict is a Go map
    (a missing key prints `<no value>`)."""

    def __init__(self, type_name: str, values: Mapping[str, object]) -> None:
        super().__init__(values)
        self.type_name = type_name


class _Missing:
    """Go's invalid value: what a missing map key gives; prints `<no value>`."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING: Final = _Missing()


# -- lexing and parsing -----------------------------------------------------------------------


@dataclass
class _Node:
    pos: int  # offset in the template, for Go's line:column in errors


@dataclass
class _Text(_Node):
    text: str


@dataclass
class _Operand(_Node):
    """One word of a command: kind is field (.A.B), dot, var ($x.A), func, str, num, bool, nil,
    pipe (a parenthesised pipeline, then `chain`)."""

    kind: str
    source: str
    name: str = ""
    chain: tuple[str, ...] = ()
    value: object = None
    pipe: _Pipe | None = None


@dataclass
class _Command(_Node):
    operands: list[_Operand]


@dataclass
class _Pipe(_Node):
    decl: list[str]
    assign: bool  # `$x = ...` rather than `$x := ...`
    commands: list[_Command]
    source: str


@dataclass
class _Action(_Node):
    pipe: _Pipe


@dataclass
class _Block(_Node):
    """if, range or with: body runs when pipe is true (each item, for range), else orelse."""

    kind: str
    pipe: _Pipe
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)
    in_else: bool = False  # the parser is past its {{else}}
    chained: bool = False  # an `{{else if}}`: its {{end}} is its parent's


_TOKEN: Final = re.compile(
    r"""(?P<space>\s+)
    |(?P<str>"(?:[^"\\\n]|\\.)*")
    |(?P<raw>`[^`]*`)
    |(?P<declare>:=)
    |(?P<punct>[()|,=])
    |(?P<chainfield>(?<=\))(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
    |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
    |(?P<dot>\.)
    |(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    |(?P<num>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.vars: list[str] = ["$"]

    def fail(self, pos: int, message: str) -> TemplateError:
        line = self.text.count("\n", 0, pos) + 1
        return TemplateError(f":{line}: {message}")

    def parse(self) -> list[_Node]:
        nodes: list[_Node] = []
        stack: list[_Block] = []
        pos = 0
        text = self.text
        trim_next = False

        def add(node: _Node) -> None:
            target = (
                nodes if not stack else (stack[-1].orelse if stack[-1].in_else else stack[-1].body)
            )
            target.append(node)

        while pos <= len(text):
            start = text.find("{{", pos)
            chunk = text[pos:] if start < 0 else text[pos:start]
            if trim_next:
                chunk = chunk.lstrip(" \t\r\n")
            trim_left = start >= 0 and text[start + 2 : start + 4] in ("- ", "-\t", "-\n", "-\r")
            if trim_left:
                chunk = chunk.rstrip(" \t\r\n")
            if chunk:
                add(_Text(pos, chunk))
            if start < 0:
                break
            inner_start = start + (3 if trim_left else 2)
            end, trim_next = self._action_end(inner_start)
            inner = text[inner_start:end]
            pos = end + (4 if trim_next else 2)
            stripped = inner.strip()
            if stripped.startswith("/*"):
                if not stripped.endswith("*/"):
                    raise self.fail(start, "unclosed comment")
                continue
            self._action(inner_start, inner, stack, nodes, add)
        if stack:
            raise self.fail(len(text), "unexpected EOF")
        return nodes

    def _action_end(self, pos: int) -> tuple[int, bool]:
        """Where the action from `pos` ends (`}}`, or ` -}}`), skipping quoted strings."""
        text = self.text
        i = pos
        while i < len(text):
            c = text[i]
            if c == '"':
                m = re.compile(r'"(?:[^"\\\n]|\\.)*"').match(text, i)
                if m is None:
                    raise self.fail(i, "unterminated quoted string")
                i = m.end()
                continue
            if c == "`":
                close = text.find("`", i + 1)
                if close < 0:
                    raise self.fail(i, "unterminated raw quoted string")
                i = close + 1
                continue
            if text.startswith("}}", i):
                if i >= 2 and text[i - 1] == "-" and text[i - 2] in " \t\n":
                    return i - 2, True
                return i, False
            i += 1
        raise self.fail(pos, "unclosed action")

    def _action(
        self,
        pos: int,
        inner: str,
        stack: list[_Block],
        nodes: list[_Node],
        add: Callable[[_Node], None],
    ) -> None:
        tokens = self._tokens(pos, inner)
        if not tokens:
            raise self.fail(pos, "missing value for command")
        kind, word, at = tokens[0]
        if kind == "ident" and word in ("if", "range", "with"):
            block = _Block(at, word, self._pipe(tokens[1:], at, word, allow_decl=True))
            add(block)
            stack.append(block)
            return
        if kind == "ident" and word == "end":
            if not stack:
                raise self.fail(at, "unexpected {{end}}")
            if len(tokens) > 1:
                raise self.fail(at, f"unexpected {tokens[1][1]!r} in end")
            block = stack.pop()
            while block.chained:  # (an `else if` ends with its parent)
                block = stack.pop()
            return
        if kind == "ident" and word == "else":
            if not stack:
                raise self.fail(at, "unexpected {{else}}")
            block = stack[-1]
            if block.in_else:
                raise self.fail(at, "expected end; found {{else}}")
            block.in_else = True
            if len(tokens) > 1 and tokens[1][:2] in (("ident", "if"), ("ident", "with")):
                nested = _Block(at, tokens[1][1], self._pipe(tokens[2:], at, tokens[1][1], True))
                nested.chained = True
                block.orelse.append(nested)
                stack.append(nested)
            elif len(tokens) > 1:
                raise self.fail(at, f"unexpected {tokens[1][1]!r} in else")
            return
        if kind == "ident" and word in ("define", "template", "block", "break", "continue"):
            raise self.fail(at, f"{{{{{word}}}}} is not supported by strata's templates")
        add(_Action(at, self._pipe(tokens, at, "command", allow_decl=True)))

    def _tokens(self, pos: int, inner: str) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        i = 0
        while i < len(inner):
            m = _TOKEN.match(inner, i)
            if m is None or m.end() == i:
                ch = inner[i]
                raise self.fail(pos + i, f"bad character U+{ord(ch):04X} {ch!r}")
            kind = m.lastgroup or ""
            if kind != "space":
                out.append((kind, m.group(), pos + i))
            i = m.end()
        return out

    def _pipe(
        self, tokens: list[tuple[str, str, int]], pos: int, context: str, allow_decl: bool
    ) -> _Pipe:
        decl: list[str] = []
        assign = False
        if allow_decl and tokens and tokens[0][0] == "var":
            names = []
            i = 0
            while i < len(tokens) and tokens[i][0] == "var":
                names.append(tokens[i][1])
                if i + 1 < len(tokens) and tokens[i + 1][1] == ",":
                    i += 2
                    continue
                break
            after = i + 1
            if (
                after < len(tokens)
                and tokens[after][0] in ("declare", "punct")
                and tokens[after][1] in (":=", "=")
            ):
                decl, assign = names, tokens[after][1] == "="
                tokens = tokens[after + 1 :]
                for name in decl:
                    if assign and name not in self.vars:
                        raise self.fail(pos, f'undefined variable "{name}"')
        pipe, rest = self._commands(tokens, pos, context)
        if rest:
            raise self.fail(rest[0][2], f'unexpected "{rest[0][1]}" in {context}')
        pipe.decl, pipe.assign = decl, assign
        self.vars.extend(decl)
        return pipe

    def _commands(
        self, tokens: list[tuple[str, str, int]], pos: int, context: str
    ) -> tuple[_Pipe, list[tuple[str, str, int]]]:
        """Commands up to the end or an unmatched `)`; returns what is left."""
        commands: list[_Command] = []
        operands: list[_Operand] = []
        i = 0
        while i < len(tokens):
            kind, word, at = tokens[i]
            if word == ")" and kind == "punct":
                break
            if word == "|" and kind == "punct":
                if not operands:
                    raise self.fail(at, "missing value for command")
                commands.append(_Command(operands[0].pos, operands))
                operands = []
                i += 1
                continue
            if word == "(" and kind == "punct":
                inner, rest = self._commands(tokens[i + 1 :], at, "parenthesized pipeline")
                if not rest or rest[0][1] != ")":
                    raise self.fail(at, "unclosed left paren")
                i = len(tokens) - len(rest) + 1
                chain: tuple[str, ...] = ()
                if i < len(tokens) and tokens[i][0] == "chainfield":
                    chain = tuple(tokens[i][1].split(".")[1:])
                    i += 1
                source = self.text[at : (tokens[i][2] if i < len(tokens) else at + 1)].strip()
                operands.append(_Operand(at, "pipe", source, chain=chain, pipe=inner))
                continue
            operands.append(self._operand(kind, word, at))
            i += 1
        if operands:
            commands.append(_Command(operands[0].pos, operands))
        elif commands:
            raise self.fail(pos, "missing value for command")
        if not commands:
            raise self.fail(pos, f"missing value for {context}")
        source = " | ".join(" ".join(o.source for o in c.operands) for c in commands)
        return _Pipe(pos, [], False, commands, source), tokens[i:]

    def _operand(self, kind: str, word: str, at: int) -> _Operand:
        if kind == "field":
            return _Operand(at, "field", word, chain=tuple(word.split(".")[1:]))
        if kind == "dot":
            return _Operand(at, "dot", word)
        if kind == "var":
            name, *chain = word.split(".")
            if name not in self.vars:
                raise self.fail(at, f'undefined variable "{name}"')
            return _Operand(at, "var", word, name=name, chain=tuple(chain))
        if kind in ("str", "raw"):
            value = word[1:-1] if kind == "raw" else json.loads(_go_escapes(word))
            return _Operand(at, "str", word, value=value)
        if kind == "num":
            try:
                number: object = int(word.replace("_", ""), 0)
            except ValueError:
                number = float(word.replace("_", ""))
            return _Operand(at, "num", word, value=number)
        if kind == "ident":
            if word in ("true", "false"):
                return _Operand(at, "bool", word, value=word == "true")
            if word == "nil":
                return _Operand(at, "nil", word)
            if word not in FUNCTIONS:
                raise self.fail(at, f'function "{word}" not defined')
            return _Operand(at, "func", word, name=word)
        raise self.fail(at, f'unexpected "{word}" in operand')


def _go_escapes(quoted: str) -> str:
    """A Go interpreted string literal as JSON reads it (\\a \\v \\x.. and \\' differ)."""
    table = {"a": "\\u0007", "v": "\\u000b", "'": "'"}

    def one(m: re.Match[str]) -> str:
        c = m.group(1)
        if c in table:
            return table[c]
        if c.startswith("x"):
            return f"\\u00{c[1:]}"
        return m.group(0)

    return re.sub(r"\\(x[0-9a-fA-F]{2}|[av'])", one, quoted)


# -- printing and functions -------------------------------------------------------------------


def go_string(value: object) -> str:
    """A value as Go's fmt prints it with %v (what `{{.X}}` writes)."""
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        shown = _plain(value)
        return (
            "map[" + " ".join(f"{go_string(k)}:{go_string(shown[k])}" for k in sorted(shown)) + "]"
        )
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    return str(value)


def _go_float(value: float) -> str:
    """%v of a float64 (strconv's 'g', shortest): 1e+06, 123456, 0.5, 1.5e-05."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    import decimal

    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(str(d) for d in digits)
    exp = len(text) + exponent - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:  # (strconv: precision 6 decides for the shortest form)
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return minus + format(decimal.Decimal(repr(abs(value))), "f").rstrip("0").rstrip(".")


def _plain(value: Mapping[str, object]) -> dict[str, object]:
    """A row's fields without its methods (`.Label NAME`), as docker's MarshalJSON of it."""
    return {k: v for k, v in value.items() if not callable(v)}


def _go_type(value: object) -> str:
    """The Go type a decoded JSON value would have, for error messages."""
    names = {bool: "bool", int: "int", float: "float64", str: "string"}
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    return names.get(type(value), type(value).__name__)


def truth(value: object) -> bool:
    """Go's truth: false, 0, nil, and empty strings, lists and maps are false."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


class _FuncError(Exception):
    """A function's own error: Go reports it as `error calling NAME: MESSAGE`."""


def _json(value: object) -> str:
    """docker's `json`: compact, with <, > and & as they are (SetEscapeHTML(false))."""
    if isinstance(value, Fields):  # (docker marshals a row as a map: sorted keys)
        value = dict(sorted(_plain(value).items()))
    return json.dumps(
        None if value is MISSING else value, ensure_ascii=False, separators=(",", ":")
    )


def _index(item: object, *keys: object) -> object:
    for key in keys:
        if item is None or item is MISSING:
            raise _FuncError("index of untyped nil")
        if isinstance(item, Mapping):
            item = item.get(key, MISSING)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise _FuncError(f"cannot index slice/array with type {type(key).__name__}")
            if not 0 <= key < len(item):
                raise _FuncError(f"index out of range: {key}")
            item = item[key] if not isinstance(item, str) else ord(item[key])
        else:
            raise _FuncError(f"can't index item of type {type(item).__name__}")
    return item


def _slice(item: object, *bounds: object) -> object:
    if not isinstance(item, (list, tuple, str)):
        raise _FuncError(f"can't slice item of type {type(item).__name__}")
    ints = [b for b in bounds if isinstance(b, int)]
    if len(ints) != len(bounds) or len(ints) > 2 or any(not 0 <= b <= len(item) for b in ints):
        raise _FuncError("index out of range")
    start, end = (ints + [0, len(item)][len(ints) :])[:2]
    return item[start:end]


def _len(item: object) -> int:
    if isinstance(item, (str, list, tuple, dict)):
        return len(item)
    raise _FuncError(f"len of type {type(item).__name__}")


def _compare(op: str) -> Callable[..., bool]:
    def compare(a: object, *others: object) -> bool:
        if op == "eq":
            if not others:
                raise _FuncError("missing argument for comparison")
            return any(a == b for b in others)
        (b,) = others
        if type(a) is not type(b) and not (
            isinstance(a, (int, float)) and isinstance(b, (int, float))
        ):
            raise _FuncError("incompatible types for comparison")
        if op == "ne":
            return a != b
        try:
            return bool({"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op])  # type: ignore[operator]
        except TypeError:
            raise _FuncError("invalid type for comparison") from None

    return compare


def _sprint(*values: object) -> str:
    """Go's fmt.Sprint: a space between two operands when neither is a string."""
    out = ""
    for i, v in enumerate(values):
        if i and not isinstance(v, str) and not isinstance(values[i - 1], str):
            out += " "
        out += go_string(v)
    return out


def _printf(fmt: object, *values: object) -> str:
    """fmt.Sprintf for the common verbs (%s %v %d %q %x %f %%, width and flags)."""
    args = list(values)

    def one(m: re.Match[str]) -> str:
        spec, verb = m.group(1), m.group(2)
        if verb == "%":
            return "%"
        if not args:
            return f"%!{verb}(MISSING)"
        v = args.pop(0)
        if verb in "sv":
            return ("%" + spec + "s") % go_string(v)
        if verb == "q":
            return ("%" + spec + "s") % json.dumps(go_string(v), ensure_ascii=False)
        if verb == "t":
            return go_string(v)
        try:
            return ("%" + spec + verb) % v
        except TypeError:
            return f"%!{verb}({type(v).__name__}={go_string(v)})"

    return re.sub(r"%([-+# 0]*\d*(?:\.\d+)?)([a-zA-Z%])", one, str(fmt))


def _urlquery(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote_plus(text)


def _pad(value: object, before: object, after: object) -> str:
    """docker's `pad`: spaces before and after."""
    return " " * _int(before) + go_string(value) + " " * _int(after)


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise _FuncError(f"expected an integer; found {go_string(value)}")
    return value


def _truncate(value: object, length: object) -> str:
    """docker's `truncate`: the first `length` characters."""
    text = go_string(value)
    return text[: _int(length)]


def _title(value: object) -> str:
    """docker's `title` (strings.Title: each word's first letter upper-case)."""
    return re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), go_string(value))


FUNCTIONS: Final[dict[str, Callable[..., object]]] = {
    "and": lambda *a: next((v for v in a if not truth(v)), a[-1]),
    "or": lambda *a: next((v for v in a if truth(v)), a[-1]),
    "not": lambda v: not truth(v),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "println": lambda *a: " ".join(go_string(v) for v in a) + "\n",
    "printf": _printf,
    "urlquery": lambda *a: _urlquery(_sprint(*a)),
    "eq": _compare("eq"),
    "ne": _compare("ne"),
    "lt": _compare("lt"),
    "le": _compare("le"),
    "gt": _compare("gt"),
    "ge": _compare("ge"),
    # docker's CLI (cli/templates)
    "json": _json,
    "join": lambda items, sep: go_string(sep).join(go_string(v) for v in items),
    "split": lambda text, sep: go_string(text).split(go_string(sep)),
    "lower": lambda text: go_string(text).lower(),
    "upper": lambda text: go_string(text).upper(),
    "title": _title,
    "pad": _pad,
    "truncate": _truncate,
}

# A table's header row runs the template over the column names; docker's functions then give
# the name as it is (docker's HeaderFunctions).
_HEADER_FUNCTIONS: Final[dict[str, Callable[..., object]]] = FUNCTIONS | {
    name: lambda v, *_: go_string(v)
    for name in ("json", "join", "split", "lower", "upper", "title", "pad", "truncate")
}


# -- execution --------------------------------------------------------------------------------


class Template:
    """A parsed template: `execute(data)` is its text for one value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.nodes = _Parser(text).parse()

    def execute(
        self,
        data: object,
        *,
        missing_key_error: bool = False,
        functions: Mapping[str, Callable[..., object]] = FUNCTIONS,
    ) -> str:
        """The template's output for `data`. missing_key_error: a missing map key is an error
        (docker inspect's `missingkey=error`) rather than `<no value>`."""
        run = _Run(self.text, missing_key_error, functions)
        out: list[str] = []
        run.nodes(self.nodes, data, [("$", data)], out)
        return "".join(out)


@dataclass
class _Run:
    text: str
    missing_key_error: bool
    functions: Mapping[str, Callable[..., object]]

    def fail(self, node: _Node, source: str, message: str) -> TemplateError:
        line = self.text.count("\n", 0, node.pos) + 1
        column = node.pos - (self.text.rfind("\n", 0, node.pos) + 1)
        context = source if len(source) <= 20 else source[:20] + "..."
        return TemplateError(f':{line}:{column}: executing "" at <{context}>: {message}')

    def nodes(
        self, nodes: Sequence[_Node], dot: object, scope: list[tuple[str, object]], out: list[str]
    ) -> None:
        mark = len(scope)
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipe(node.pipe, dot, scope)
                if not node.pipe.decl:
                    out.append(go_string(value))
            elif isinstance(node, _Block):
                self.block(node, dot, scope, out)
        del scope[mark:]

    def block(
        self, node: _Block, dot: object, scope: list[tuple[str, object]], out: list[str]
    ) -> None:
        mark = len(scope)
        if node.kind == "range":
            decl, node.pipe.decl = node.pipe.decl, []
            try:
                value = self.pipe(node.pipe, dot, scope)
            finally:
                node.pipe.decl = decl
            if isinstance(value, Mapping):
                items: list[tuple[object, object]] = [(k, value[k]) for k in sorted(value)]
            elif isinstance(value, (list, tuple)):
                items = list(enumerate(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                items = [(i, i) for i in range(value)]
            elif value is None or value is MISSING:
                items = []
            else:
                raise self.fail(
                    node, node.pipe.source, f"range can't iterate over {go_string(value)}"
                )
            for key, item in items:
                if len(decl) == 1:
                    scope.append((decl[0], item))
                elif len(decl) == 2:
                    scope.extend([(decl[0], key), (decl[1], item)])
                self.nodes(node.body, item, scope, out)
                del scope[mark:]
            if not items:
                self.nodes(node.orelse, dot, scope, out)
            return
        value = self.pipe(node.pipe, dot, scope)
        if truth(value):
            self.nodes(node.body, value if node.kind == "with" else dot, scope, out)
        else:
            self.nodes(node.orelse, dot, scope, out)
        del scope[mark:]

    def pipe(self, pipe: _Pipe, dot: object, scope: list[tuple[str, object]]) -> object:
        value: object = MISSING
        for i, command in enumerate(pipe.commands):
            value = self.command(command, dot, scope, value if i else MISSING, i > 0)
        for name in pipe.decl:
            if pipe.assign:
                for j in range(len(scope) - 1, -1, -1):
                    if scope[j][0] == name:
                        scope[j] = (name, value)
                        break
            else:
                scope.append((name, value))
        return value

    def command(
        self,
        command: _Command,
        dot: object,
        scope: list[tuple[str, object]],
        final: object,
        has_final: bool,
    ) -> object:
        first, *rest = command.operands
        args = [self.operand(o, dot, scope) for o in rest]
        if has_final:
            args.append(final)
        source = " ".join(o.source for o in command.operands)
        if first.kind == "func":
            function = self.functions[first.name]
            try:
                return function(*args)
            except _FuncError as e:
                raise self.fail(first, source, f"error calling {first.name}: {e}") from None
            except TypeError:
                message = f"wrong number of args for {first.name}: got {len(args)}"
                raise self.fail(first, source, message) from None
        value = self.operand(first, dot, scope, args if args else None)
        if args and first.kind not in ("field", "var", "pipe"):
            raise self.fail(
                first, first.source, f"can't give argument to non-function {first.source}"
            )
        return value

    def operand(
        self,
        operand: _Operand,
        dot: object,
        scope: list[tuple[str, object]],
        args: list[object] | None = None,
    ) -> object:
        if operand.kind in ("str", "num", "bool"):
            return operand.value
        if operand.kind == "nil":
            raise self.fail(operand, "nil", "nil is not a command")
        if operand.kind == "dot":
            return dot
        if operand.kind == "func":
            return self.command(_Command(operand.pos, [operand]), dot, scope, MISSING, False)
        if operand.kind == "var":
            base = next(v for name, v in reversed(scope) if name == operand.name)
        elif operand.kind == "pipe":
            assert operand.pipe is not None
            base = self.pipe(operand.pipe, dot, scope)
        else:
            base = dot
        return self.chain(operand, base, operand.chain, args)

    def chain(
        self, operand: _Operand, value: object, names: Sequence[str], args: list[object] | None
    ) -> object:
        for i, name in enumerate(names):
            last = i == len(names) - 1
            if isinstance(value, Fields):
                if name not in value:
                    raise self.fail(
                        operand,
                        operand.source,
                        f"can't evaluate field {name} in type {value.type_name}",
                    )
                value = value[name]
            elif isinstance(value, Mapping):
                if name in value:
                    value = value[name]
                elif self.missing_key_error:
                    raise self.fail(operand, operand.source, f'map has no entry for key "{name}"')
                else:
                    value = MISSING
            elif value is None or value is MISSING:
                raise self.fail(operand, operand.source, f"nil pointer evaluating {name}")
            else:
                raise self.fail(
                    operand,
                    operand.source,
                    f"can't evaluate field {name} in type {_go_type(value)}",
                )
            if callable(value):
                value = value(*(args or [])) if last else value()
                if last:
                    return value
        if args:
            raise self.fail(
                operand, operand.source, f"can't give argument to non-function {operand.source}"
            )
        return value


def parse(text: str) -> Template:
    """`text` as a template (TemplateError if it does not parse)."""
    return Template(text)


# -- docker's formatted lists -----------------------------------------------------------------


def check_format(fmt: str) -> Template:
    """A list's --format as a template, as `render` reads it (TemplateError if it is not one):
    so a command can refuse a bad one before it does anything."""
    text = fmt[len("table") :] if fmt.startswith("table") else fmt
    return parse(text.strip(" ").replace("\\t", "\t").replace("\\n", "\n"))


def render(fmt: str, rows: Sequence[Mapping[str, object]], headers: Mapping[str, object]) -> str:
    """A list command's output for --format: each row through the template, one line each;
    `table TEMPLATE` adds the header line (the template over `headers`, docker's column names)
    and lays the tab-separated cells out as docker's tabwriter does. As docker, `\\t` and `\\n`
    written as two characters stand for a tab and a newline."""
    table = fmt.startswith("table")
    template = check_format(fmt)
    lines = [template.execute(row) + "\n" for row in rows]
    if not table:
        return "".join(lines)
    header = template.execute(dict(headers), functions=_HEADER_FUNCTIONS)
    return tabwrite(header + "\n" + "".join(lines))


def tabwrite(text: str, *, minwidth: int = 10, padding: int = 3) -> str:
    """Go's tabwriter as docker's tables use it (minwidth 10, padding 3, spaces): each
    tab-terminated cell padded to its column's width within a run of lines that have that
    column; the text after a line's last tab stays as it is."""
    lines = [line.split("\t") for line in text.split("\n")]
    widths = [[0] * (len(cells) - 1) for cells in lines]
    columns = max((len(cells) - 1 for cells in lines), default=0)
    for column in range(columns):
        run: list[int] = []
        for i, cells in enumerate([*lines, []]):
            if len(cells) - 1 > column:
                run.append(i)
                continue
            if run:
                width = max(minwidth, *(len(lines[j][column]) + padding for j in run))
                for j in run:
                    widths[j][column] = width
                run = []
    return "\n".join(
        "".join(cell.ljust(w) for cell, w in zip(cells, widths[i], strict=False)) + cells[-1]
        for i, cells in enumerate(lines)
    )


__all__ = [
    "FUNCTIONS",
    "MISSING",
    "Fields",
    "Template",
    "TemplateError",
    "check_format",
    "go_string",
    "parse",
    "render",
    "tabwrite",
]
