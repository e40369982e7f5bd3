"""The Dockerfile parser and Docker's word processing (no I/O)."""

from __future__ import annotations

import pytest

from images.dockerfile import (
    DockerfileError,
    expand,
    expand_heredoc,
    expand_words,
    name_values,
    parse,
)


def test_comments_blank_lines_and_continuations() -> None:
    text = (
        "# a comment\n"
        "\n"
        "FROM base\n"
        "RUN echo a \\\n"
        "# a comment inside the continuation is dropped\n"
        "\n"
        "  && echo b\n"
        "   run   echo lower-case keyword\n"
    )
    df = parse(text)
    assert [(i.line, i.keyword, i.args) for i in df.instructions] == [
        (3, "FROM", "base"),
        (4, "RUN", "echo a   && echo b"),
        (8, "RUN", "echo lower-case keyword"),
    ]


def test_escape_directive_changes_the_continuation_character() -> None:
    df = parse("# escape=`\nFROM base\nRUN dir c:\\ `\n  more\n")
    assert df.escape == "`"
    assert df.instructions[1].args == "dir c:\\   more"


def test_directive_after_a_comment_is_only_a_comment() -> None:
    df = parse("# hello\n# escape=`\nFROM base\nRUN a \\\n b\n")
    assert df.escape == "\\"
    assert df.instructions[1].args == "a  b"


def test_unknown_directive_ends_the_directives() -> None:
    df = parse("# syntax=docker/dockerfile:1\n# unknown=1\n# escape=`\nFROM base\n")
    assert df.escape == "\\"


def test_invalid_escape_directive() -> None:
    with pytest.raises(DockerfileError, match="line 1"):
        parse("# escape=x\nFROM base\n")


def test_exec_form_and_shell_form() -> None:
    df = parse(
        'FROM base\nCMD ["/bin/echo", "hi there"]\nENTRYPOINT echo hi\nRUN [not json\n'
        'COPY ["a b", "/dst/"]\nENV X ["kept", "as text"]\n'
    )
    cmd, entrypoint, run, copy, env = df.instructions[1:]
    assert cmd.exec_form == ("/bin/echo", "hi there")
    assert entrypoint.exec_form is None
    assert entrypoint.args == "echo hi"
    assert run.exec_form is None
    assert copy.exec_form == ("a b", "/dst/")
    assert env.exec_form is None


def test_flags_are_split_off() -> None:
    (_, copy) = parse("FROM base\nCOPY --chown=1:2 --from=x a b\n").instructions
    assert copy.flags == (("chown", "1:2"), ("from", "x"))
    assert copy.flag("chown") == "1:2"
    assert copy.args == "a b"
    assert str(copy) == "COPY --chown=1:2 --from=x a b"


def test_arg_before_from_keeps_its_order() -> None:
    df = parse("ARG V=1\nFROM base:$V\n")
    assert [i.keyword for i in df.instructions] == ["ARG", "FROM"]


def test_a_line_without_a_keyword_is_an_error() -> None:
    with pytest.raises(DockerfileError, match="line 2"):
        parse("FROM base\n=oops\n")


ENV = {"A": "apple", "EMPTY": "", "B": "b c"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$A", "apple"),
        ("${A}s", "apples"),
        ("x${A}y", "xappley"),
        ("$UNSET", ""),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${UNSET-default}", "default"),
        ("${A:-default}", "apple"),
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET:+alt}", ""),
        ("${UNSET:-$A}", "apple"),
        ("\\$A", "$A"),
        ("'$A'", "$A"),
        ('"$A and $B"', "apple and b c"),
        ('"\\$A"', "$A"),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("cost: $5", "cost: "),  # $5 is a (never set) variable, as in Docker
        ("a b", "a b"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, ENV) == expected


def test_expand_with_backtick_escape() -> None:
    assert expand("`$A \\ `", ENV, "`") == "$A \\ "


def test_expand_errors() -> None:
    with pytest.raises(DockerfileError, match="single quote"):
        expand("'open", ENV)
    with pytest.raises(DockerfileError, match="missing"):
        expand("${A:-x", ENV)
    with pytest.raises(DockerfileError, match="modifier"):
        expand("${A?x}", ENV)


def test_expand_words_splits_outside_quotes() -> None:
    assert expand_words('a "b c" $A \'$B\' ""', ENV) == ["a", "b c", "apple", "$B", ""]
    assert expand_words("$B", ENV) == ["b c"]  # a variable's value is not split again
    assert expand_words("  x   $UNSET  y ", ENV) == ["x", "y"]


def test_name_values() -> None:
    assert name_values('A=1 B="two words" C=$A', ENV, "\\") == [
        ("A", "1"),
        ("B", "two words"),
        ("C", "apple"),
    ]
    assert name_values("NAME the rest $A", ENV, "\\") == [("NAME", "the rest apple")]
    assert name_values("K=a\\ b", ENV, "\\") == [("K", "a b")]
    with pytest.raises(DockerfileError, match="value"):
        name_values("NAME", ENV, "\\")
    with pytest.raises(DockerfileError, match="NAME=value"):
        name_values("A=1 B", ENV, "\\")


def test_here_documents_take_the_lines_up_to_their_names() -> None:
    text = (
        "FROM base\n"
        "RUN <<EOF\n"
        "echo one\n"
        "# a shell comment, not a Dockerfile one\n"
        "\n"
        "EOF\n"
        "COPY <<a <<-'b' /dest/\n"
        "A $X \\\n"
        "a\n"
        "\tB\n"
        "\tb\n"
        'RUN echo \'<<NOT\' "<<NOT" && cat <<"Q" >/q\n'
        "$Q\n"
        "Q\n"
    )
    run, copy, last = parse(text).instructions[1:]
    assert (run.line, run.args) == (2, "<<EOF")
    (doc,) = run.heredocs
    assert (doc.word, doc.name, doc.expand) == ("<<EOF", "EOF", True)
    assert doc.body == "echo one\n# a shell comment, not a Dockerfile one\n\n"
    assert doc.raw == doc.body + "EOF\n"
    assert [(d.name, d.body, d.expand) for d in copy.heredocs] == [
        ("a", "A $X \\\n", True),
        ("b", "B\n", False),  # <<-: leading tabs go, of the end line too
    ]
    assert copy.heredocs[1].raw == "\tB\n\tb\n"
    assert copy.line == 7
    assert last.line == 12
    assert [(d.word, d.body, d.expand) for d in last.heredocs] == [('<<"Q"', "$Q\n", False)]


def test_here_documents_only_in_run_copy_add_and_never_in_the_exec_form() -> None:
    df = parse('FROM base\nLABEL a="<<EOF"\nRUN ["cat", "<<EOF"]\nEOF\n')
    assert [i.heredocs for i in df.instructions] == [(), (), (), ()]
    assert df.instructions[3].keyword == "EOF"  # an instruction like any other (then refused)


def test_a_here_document_without_its_end_is_an_error() -> None:
    with pytest.raises(DockerfileError, match="line 2: RUN: here-document <<END has no end"):
        parse("FROM base\nRUN cat <<END\nnever ended\nEND \n")


def test_here_document_expansion_keeps_quotes_and_escapes() -> None:
    env = {"A": "1", "B": "two words"}
    text = "a=\"$A\" b='${B}' c=\\$A d=\\n ${C:-none}\n"
    assert expand_heredoc(text, env) == "a=\"1\" b='two words' c=$A d=\\n none\n"
