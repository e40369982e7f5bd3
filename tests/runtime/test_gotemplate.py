"""runtime.gotemplate: Go's text/template as docker's `--format` uses it, checked against what Go
and docker print for the same template and value (no containers needed)."""

from __future__ import annotations

import pytest

from runtime.gotemplate import Fields, TemplateError, go_string, parse, render, tabwrite

DATA: dict[str, object] = {
    "Id": "0123456789abcdef",
    "Name": "web",
    "Names": ["a", "b"],
    "Config": {"Env": ["A=1", "B=<&>"], "Labels": {"z": "2", "a": "1"}, "Cmd": None},
    "State": {"Status": "running", "Pid": 42, "Running": True, "ExitCode": 0},
    "Memory": 1000000.0,
    "Ratio": 0.5,
    "Empty": [],
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Name}}", "web"),
        ("{{.State.Status}}", "running"),
        ("{{ .State.Pid }}", "42"),
        ("{{.State.Running}}", "true"),
        ("{{json .Config.Env}}", '["A=1","B=<&>"]'),  # (docker: no HTML escaping)
        ("{{json .State}}", '{"Status":"running","Pid":42,"Running":true,"ExitCode":0}'),
        ("{{.Config.Env}}", "[A=1 B=<&>]"),
        ("{{.Config.Labels}}", "map[a:1 z:2]"),  # Go prints maps by sorted key
        ("{{.Config.Cmd}}", "<nil>"),
        ("{{.Config.Labels.none}}", "<no value>"),
        ("{{.Memory}} {{.Ratio}}", "1e+06 0.5"),
        ("{{index .Names 1}}", "b"),
        ('{{index .Config.Labels "z"}}', "2"),
        ('{{join .Names ", "}}', "a, b"),
        ('{{upper .Name}} {{lower "AbC"}} {{title "hello world"}}', "WEB abc Hello World"),
        ('{{split "a:b:c" ":"}}', "[a b c]"),
        ("{{len .Names}} {{len .Name}}", "2 3"),
        ("{{range .Names}}<{{.}}>{{end}}", "<a><b>"),
        ("{{range $i, $n := .Names}}{{$i}}={{$n}} {{end}}", "0=a 1=b "),
        ("{{range $k, $v := .Config.Labels}}{{$k}}{{$v}}{{end}}", "a1z2"),
        ("{{range .Empty}}x{{else}}none{{end}}", "none"),
        ("{{with .State}}{{.Pid}}{{end}}", "42"),
        ("{{with .Empty}}x{{else}}empty{{end}}", "empty"),
        ('{{if eq .State.Status "running"}}up{{else}}down{{end}}', "up"),
        ('{{if eq .Name "x"}}1{{else if .State.Running}}2{{else}}3{{end}}', "2"),
        ("{{if and .Name (not .Empty)}}yes{{end}}", "yes"),
        ("{{if or .Empty .Name}}{{.Name}}{{end}}", "web"),
        ("{{if gt .State.Pid 40}}big{{end}}", "big"),
        ("{{$n := .Name}}{{range .Names}}{{$n}}{{.}} {{end}}", "weba webb "),
        ('{{.Name | upper | printf "%s!"}}', "WEB!"),
        ('{{printf "%s-%d-%5s|" .Name .State.Pid "x"}}', "web-42-    x|"),
        ("{{(index .Names 0)}}{{len (index .Names 1)}}", "a1"),
        ("{{truncate .Id 4}}|{{pad .Name 1 2}}|", "0123| web  |"),
        ('{{print 1 2 "x" 3}} {{println "a" 1}}', "1 2x3 a 1\n"),
        ("a  {{- .Name -}}  b\n", "awebb\n"),
        ("{{/* a comment */}}x", "x"),
        ("{{`raw\\n`}}", "raw\\n"),
        ('{{"tab\\tq\\""}}', 'tab\tq"'),
    ],
)
def test_templates_print_as_go_does(template: str, expected: str) -> None:
    assert parse(template).execute(DATA) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Name", ":1: unclosed action"),
        ("{{nofunc .}}", ':1: function "nofunc" not defined'),
        ("{{end}}", ":1: unexpected {{end}}"),
        ("{{if .Name}}", ":1: unexpected EOF"),
        ("{{$x}}", ':1: undefined variable "$x"'),
        ("{{if .Name}}a{{else}}b{{else}}c{{end}}", ":1: expected end; found {{else}}"),
        ('{{define "x"}}{{end}}', ":1: {{define}} is not supported by strata's templates"),
        ("{{.Name}}\n{{ # }}", ":2: bad character U+0023 '#'"),
        ("{{ .Foo }}", ':1:3: executing "" at <.Foo>: map has no entry for key "Foo"'),
        (
            "{{.State.Something.Deeper}}",
            ':1:2: executing "" at <.State.Something.Dee...>: map has no entry for key "Something"',
        ),
        ("{{index .Names 5}}", ':1:2: executing "" at <index .Names 5>: error calling index:'),
        ("{{.Name.Sub}}", "can't evaluate field Sub in type string"),
        ('{{.Name "arg"}}', "can't give argument to non-function .Name"),
    ],
)
def test_bad_templates_fail_with_gos_words(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse(template).execute(DATA, missing_key_error=True)
    assert str(caught.value).startswith("template parsing error: template: ")
    assert message in str(caught.value)
    assert caught.value.exit_code == 125


def test_a_row_has_fields_and_methods_of_its_type() -> None:
    """A list's row (docker's ContainerContext and the like) errors on an unknown field with
    its type's name; a method field takes arguments (`.Label NAME`); `json .` leaves the
    methods out and sorts the keys, as docker's marshalling of a row does."""
    row = Fields("ContainerContext", {"Names": "c", "ID": "1", "Label": lambda k: f"<{k}>"})
    assert parse('{{.Names}} {{.Label "x"}}').execute(row) == "c <x>"
    assert parse("{{json .}}").execute(row) == '{"ID":"1","Names":"c"}'
    with pytest.raises(TemplateError, match="can't evaluate field Nope in type ContainerContext"):
        parse("{{.Nope}}").execute(row)


def test_a_missing_key_prints_no_value_unless_it_is_an_error() -> None:
    assert parse("{{.Nope}}").execute({"a": 1}) == "<no value>"
    with pytest.raises(TemplateError, match='map has no entry for key "Nope"'):
        parse("{{.Nope}}").execute({"a": 1}, missing_key_error=True)


def test_render_lists_rows_and_tables() -> None:
    """docker's list output: one line per row; `table` adds the header (the template over the
    column names, functions giving the name as it is) and aligns as docker's tabwriter does
    (minimum width 10, padding 3); `\\t` typed as two characters is a tab."""
    rows = [
        Fields("C", {"ID": "abc", "Image": "busybox"}),
        Fields("C", {"ID": "0123456789abcdef", "Image": "x"}),
    ]
    headers = {"ID": "CONTAINER ID", "Image": "IMAGE"}
    assert render("{{.ID}}:{{.Image}}", rows, headers) == "abc:busybox\n0123456789abcdef:x\n"
    assert render("table {{.ID}}\\t{{upper .Image}}", rows, headers) == (
        "CONTAINER ID       IMAGE\nabc                BUSYBOX\n0123456789abcdef   X\n"
    )
    assert render("table {{.Image}}", [], headers) == "IMAGE\n"
    assert render("{{.ID}}", [], headers) == ""


def test_tabwriter_pads_each_run_of_lines_to_its_widest_cell() -> None:
    assert tabwrite("a\tb\tc\nlonger-than-ten\tb\tc\n") == (
        "a                 b         c\nlonger-than-ten   b         c\n"
    )
    # a line without the column ends the run: the lines after it are aligned on their own
    assert tabwrite("aaaaaaaaaaaaaa\tx\nno tabs\nb\tx\n") == (
        "aaaaaaaaaaaaaa   x\nno tabs\nb         x\n"
    )


def test_go_string_of_values() -> None:
    assert go_string(None) == "<nil>"
    assert go_string([1, "a", [True]]) == "[1 a [true]]"
    assert go_string(123456.0) == "123456"
    assert go_string(1234567.0) == "1.234567e+06"
    assert go_string(0.00001) == "1e-05"
