"""`--format` with Go templates on the list commands and `inspect`, as docker takes it: against
podman on a private store (the same image and a created container in both) where podman prints
the same thing, and docker's own fields, tables and errors where it does not."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE
from tests.helpers.podman import PrivatePodman
from tests.runtime.conftest import Strata, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]

IMAGE = "localhost/uniontest:1"


@pytest.fixture
def loaded(strata: Strata) -> Strata:
    """strata with the test image and a created container `c1` (label a=b, a named volume)."""
    strata.run("load", "-q", "-i", str(BUSYBOX_DOCKER_ARCHIVE), check=True)
    strata.run(
        "create", "--name", "c1", "--label", "a=b", "-v", "vol1:/data", IMAGE, "sleep", "100",
        check=True,
    )  # fmt: skip
    return strata


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[PrivatePodman]:
    """A private podman store with the same image and the same created container."""
    with PrivatePodman(tmp_path) as store:
        store.run("load", "-q", "-i", str(BUSYBOX_DOCKER_ARCHIVE))
        store.run(
            "create", "--name", "c1", "--network", "none", "--label", "a=b", "-v", "vol1:/data",
            IMAGE, "sleep", "100",
        )  # fmt: skip
        try:
            yield store
        finally:
            subprocess.run([*store.base, "rm", "-f", "c1"], capture_output=True, check=False)


def out(strata: Strata, *args: str) -> str:
    return strata.run(*args, check=True).stdout


@pytest.mark.parametrize(
    "args",
    [
        ("images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}} {{.Size}} {{.CreatedAt}}"),
        ("images", "--format", "{{.CreatedSince}}|{{upper .Tag}}"),
        ("history", "--format", "{{.ID}} {{.Size}} {{.CreatedSince}} {{.Comment}}", IMAGE),
        ("history", "--format", "table {{.ID}}\t{{.Comment}}", IMAGE),
        (
            "inspect", "-f",
            "{{json .Config.Env}} {{.Config.Cmd}} {{index .Config.Cmd 0}} {{join .Config.Cmd \",\"}}"
            " {{upper .Os}} {{.Config.Labels}} {{.Config.Entrypoint}}|{{.Config.WorkingDir}}|"
            "{{range .Config.Env}}[{{.}}]{{end}} {{len .RootFS.Layers}}",
            IMAGE,
        ),
        ("ps", "-a", "--format", "{{.Names}} {{.Image}}"),
        ("inspect", "-f", "{{.State.Status}} {{.Name}} {{.Config.Labels.a}} {{.Config.Cmd}}", "c1"),
    ],
)  # fmt: skip
def test_templates_print_what_podman_prints(
    loaded: Strata, podman: PrivatePodman, args: tuple[str, ...]
) -> None:
    """The same template over the same image and container: the same text. (History's
    CREATED BY and tables' widths differ between docker and podman, so those stay out.)"""
    ours = out(loaded, *args)
    assert ours.strip()
    if "table" in args[2]:  # podman pads 2, docker 3 (and width 10); podman's ID header is ID
        assert ours.splitlines()[0].split() == ["IMAGE", "COMMENT"]
        assert [line.split() for line in ours.splitlines()[1:]] == [
            line.split() for line in podman.run(*args).splitlines()[1:]
        ]
        return
    assert ours == podman.run(*args)


def test_ps_fields_are_dockers(loaded: Strata) -> None:
    """ps rows carry docker's ContainerContext: a quoted command (truncated to 20 without
    --no-trunc), lower-case State, labels as k=v, `.Label NAME`, volumes and networks."""
    cid = json.loads(out(loaded, "ps", "-a", "--format", "json"))[0]["Id"]
    line = out(
        loaded, "ps", "-a", "--format",
        '{{.ID}}|{{.Command}}|{{.State}}|{{.Status}}|{{.Label "a"}}|{{.Label "none"}}|'
        "{{.Mounts}}|{{.Networks}}|{{.LocalVolumes}}|{{.Labels}}",
    )  # fmt: skip
    assert line == (
        f'{cid[:12]}|"sleep 100"|created|Created|b||vol1|bridge|1|a=b,io.buildah.version=1.28.2\n'
    )
    assert out(loaded, "ps", "-a", "--no-trunc", "--format", "{{.ID}}") == cid + "\n"
    loaded.run("create", "--name", "c2", IMAGE, "echo", "a", "long", "command", "line", check=True)
    commands = out(loaded, "ps", "-a", "--filter", "name=c2", "--format", "{{.Command}}")
    assert commands == '"echo a long command…"\n'
    row = json.loads(out(loaded, "ps", "-a", "--filter", "name=c1", "--format", "{{json .}}"))
    assert list(row) == sorted(row)
    assert row["Names"] == "c1"
    assert row["State"] == "created"
    assert "Label" not in row


def test_table_format_has_dockers_header_and_layout(loaded: Strata) -> None:
    text = out(loaded, "ps", "-a", "--format", 'table {{.Names}}\\t{{.State}}\\t{{.Label "a"}}')
    assert text == "NAMES     STATE     LABEL\nc1        created   b\n"
    text = out(loaded, "images", "--format", "table {{.Repository}}\t{{.Tag}}")
    assert text == "REPOSITORY            TAG\nlocalhost/uniontest   1\n"
    # no rows: the header alone
    assert out(loaded, "ps", "--format", "table {{.ID}}\t{{.Names}}") == "CONTAINER ID   NAMES\n"


def test_volume_and_network_lists_and_inspect(loaded: Strata) -> None:
    text = out(loaded, "volume", "ls", "--format", "table {{.Name}}\t{{.Driver}}\t{{.Links}}")
    assert text == "VOLUME NAME   DRIVER    LINKS\nvol1          local     1\n"
    # a template wins over -q, as docker's
    assert out(loaded, "volume", "ls", "-q", "--format", "{{.Driver}}") == "local\n"
    assert out(loaded, "images", "-q", "--format", "{{.Tag}}") == "1\n"
    assert out(loaded, "ps", "-aq", "--format", "{{.Names}}") == "c1\n"
    mountpoint = out(loaded, "volume", "inspect", "-f", "{{.Mountpoint}}", "vol1").strip()
    assert mountpoint == str(loaded.root / "volumes" / "vol1" / "_data")
    names = out(loaded, "network", "ls", "--format", "{{.Name}} {{.Driver}} {{.IPv6}}")
    assert names.splitlines() == ["bridge bridge false", "host host false", "none null false"]
    subnet = out(loaded, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "bridge")  # fmt: skip
    assert subnet.strip().endswith("/16")


def test_inspect_format_json_and_each_object_on_a_line(loaded: Strata) -> None:
    both = out(loaded, "inspect", "-f", "{{.Id}}", "c1", IMAGE).splitlines()
    assert len(both) == 2
    assert both[1] == json.loads(out(loaded, "inspect", IMAGE))[0]["Id"]
    assert json.loads(out(loaded, "inspect", "--format", "json", "c1"))[0]["Name"] == "c1"
    env = json.loads(out(loaded, "container", "inspect", "--format", "{{json .Config.Env}}", "c1"))
    assert "FOO=bar" in env


def test_stats_no_stream_format(loaded: Strata) -> None:
    loaded.run("run", "-d", "--name", "s1", IMAGE, "sleep", "300", check=True)
    wait_running(loaded, "s1")
    text = out(
        loaded, "stats", "--no-stream", "--format", "{{.Name}} {{.Container}} {{.PIDs}}", "s1"
    )
    name, given, pids = text.split()
    assert (name, given) == ("s1", "s1")
    assert int(pids) >= 1
    text = out(loaded, "stats", "--no-stream", "--format", "table {{.Name}}\t{{.CPUPerc}}")
    header, line = text.splitlines()
    assert header.split() == ["NAME", "CPU", "%"]
    assert line.startswith("s1 ")
    assert line.endswith("%")
    loaded.run("rm", "-f", "s1", check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ps", "-a", "--format", "{{.Nope}}"), "can't evaluate field Nope in type ContainerContext"),
        (("images", "--format", "{{.ID"), "template: :1: unclosed action"),
        (("history", "--format", "{{nofunc .ID}}", IMAGE), 'function "nofunc" not defined'),
        (("inspect", "-f", "{{.Config.Nope}}", "c1"), 'map has no entry for key "Nope"'),
        (("inspect", "-f", "{{.Config.Nope}}", IMAGE), 'map has no entry for key "Nope"'),
        (("volume", "ls", "--format", "{{.Nope}}"), "can't evaluate field Nope in type volumeContext"),
        (("network", "ls", "--format", "{{end}}"), "unexpected {{end}}"),
        (("stats", "--no-stream", "--format", "{{if}}"), "missing value for if"),
        (("inspect", "-f", "{{index .Config.Cmd 9}}", "c1"), "error calling index: index out of range: 9"),
    ],
)  # fmt: skip
def test_bad_templates_are_one_line_and_125(
    loaded: Strata, args: tuple[str, ...], message: str
) -> None:
    done = loaded.run(*args)
    assert done.returncode == 125, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert "template parsing error: template: " in line
    assert message in line


PS_STEPS = (
    ("create", "--name", "c2", "--network", "none", IMAGE, "true"),
    ("create", "--name", "c3", "-v", "vol1:/data", IMAGE, "true"),
)


@pytest.mark.parametrize(
    "filters",
    [
        ("ancestor=localhost/uniontest:1",),
        ("ancestor=other:1",),
        ("since=c1",),
        ("before=c3",),
        ("since=c1", "before=c3"),
        ("volume=vol1",),
        ("status=created", "label=a=b"),
        ("name=c2",),
    ],
)
def test_ps_filters_select_what_podman_selects(
    loaded: Strata, podman: PrivatePodman, filters: tuple[str, ...]
) -> None:
    for step in PS_STEPS:
        loaded.run(*step, check=True)
        none = () if "--network" in step else ("--network", "none")  # (podman's network stays off)
        podman.run(*step[:3], *none, *step[3:])
    args = ["-a", *(f"--filter={f}" for f in filters), "--format", "{{.Names}}"]
    assert sorted(out(loaded, "ps", *args).split()) == sorted(podman.run("ps", *args).split())
    podman.run("rm", "-f", "c2", "c3")


def test_ps_exited_filter(loaded: Strata) -> None:
    assert loaded.run("run", "--name", "x3", IMAGE, "sh", "-c", "exit 3").returncode == 3
    assert out(loaded, "ps", "-a", "--filter", "exited=3", "--format", "{{.Names}}") == "x3\n"
    assert out(loaded, "ps", "-a", "--filter", "exited=0", "--format", "{{.Names}}") == ""
    assert out(loaded, "ps", "--filter", "status=exited", "--format", "{{.Status}}").startswith(
        "Exited (3)"
    )
    loaded.run("create", "--name", "n1", "--network", "none", IMAGE, "true", check=True)
    assert out(loaded, "ps", "-a", "--filter", "network=none", "--format", "{{.Names}}") == "n1\n"
    # docker's, where podman finds none: a short image name, a volume's mount point
    assert out(loaded, "ps", "-a", "-f", "ancestor=uniontest:1", "-f", "name=n", "-q") != ""
    assert out(loaded, "ps", "-a", "-f", "volume=/data", "--format", "{{.Names}}") == "c1\n"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("status=sleepy", "invalid filter 'status=sleepy'"),
        ("exited=x", "invalid filter 'exited=x'"),
        ("colour=red", "invalid filter 'colour=red'"),
        ("noequals", "invalid filter 'noequals'"),
    ],
)
def test_bad_ps_filters_are_one_line_and_125(loaded: Strata, item: str, message: str) -> None:
    done = loaded.run("ps", "-a", "--filter", item)
    assert done.returncode == 125
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert message in line
