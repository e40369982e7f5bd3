"""`strata history` and `strata images` as docker and podman show them (issue 17): relative
CREATED in go-units' words, sizes of the uncompressed layers, `<missing>` for steps that are no
image of their own; golden comparisons with podman on the same loaded image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.report import human_duration, human_size
from tests.helpers.commands import STRATA, assert_one_line_error, run
from tests.helpers.mounts import skip_unless_root

from .test_load import IMAGE_ID, _archive


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5399, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (13 * 86400, "13 days"),
        (14 * 86400, "2 weeks"),
        (59 * 86400, "8 weeks"),
        (60 * 86400, "2 months"),
        (729 * 86400, "24 months"),
        (730 * 86400, "2 years"),
    ],
)
def test_durations_in_go_units_words(seconds: float, words: str) -> None:
    assert human_duration(seconds) == words


def test_sizes_as_podman_prints_them() -> None:
    assert [human_size(n) for n in (0, 999, 2560, 3_520_000, 1_500_000_000)] == [
        "0 B", "999 B", "2.56 kB", "3.52 MB", "1.5 GB",
    ]  # fmt: skip


def _strata(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(STRATA, "--root", str(root), *args)


@pytest.fixture
def loaded(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    done = _strata(root, "load", "-q", "-i", str(_archive("oci")))
    assert done.returncode == 0, done.stderr
    return root


def _table(text: str) -> list[list[str]]:
    """A table's rows as cells, cut where the header's columns start (tabwriter aligns them)."""
    lines = text.splitlines()
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\s\s))\S", lines[0])]
    ends = [*starts[1:], None]
    return [[line[a:b].strip() for a, b in zip(starts, ends, strict=True)] for line in lines]


def test_history_columns_as_docker_shows_them(loaded: Path) -> None:
    done = _strata(loaded, "history", "uniontest:1")
    assert done.returncode == 0, done.stderr
    header, *rows = _table(done.stdout)
    assert header == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    assert [row[0] for row in rows] == [IMAGE_ID[:12]] + ["<missing>"] * 5
    assert all(row[1].endswith(" ago") for row in rows)
    assert rows[0][2] == '/bin/sh -c #(nop) CMD ["/bin/sh", "-c", "ech…'  # 45 characters
    assert [row[3] for row in rows] == ["0 B", "5.63 kB", "2.56 kB", "0 B", "9.73 kB", "3.5 MB"]
    assert rows[-1][4] == "imported from tarball"
    full = _table(_strata(loaded, "history", "--no-trunc", "-H=false", "uniontest:1").stdout)
    assert full[1][0] == f"sha256:{IMAGE_ID}"
    assert full[1][2].endswith('"echo FOO=$FOO; cat /etc/motd; ls -A /opt/tree"]')
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", full[1][1])
    assert [row[3] for row in full[1:]] == ["0", "5632", "2560", "0", "9728", "3502080"]
    quiet = _strata(loaded, "history", "-q", "uniontest:1").stdout
    assert quiet == f"{IMAGE_ID[:12]}\n" + "<missing>\n" * 5


def test_a_step_that_is_an_image_of_its_own_shows_its_id(loaded: Path, tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM uniontest:1\nENV X=1\nLABEL a=b\n")
    built = _strata(loaded, "build", "-q", "-t", "child:1", str(tmp_path / "ctx"))
    assert built.returncode == 0, built.stderr
    child = built.stdout.strip().removeprefix("sha256:")
    ids = _strata(loaded, "history", "-q", "child:1").stdout.split()
    assert ids == [child[:12], "<missing>", IMAGE_ID[:12]] + ["<missing>"] * 5
    created = [row[1] for row in _table(_strata(loaded, "history", "child:1").stdout)[1:3]]
    assert all(re.fullmatch(r"(Less than a second|\d+ seconds?) ago", c) for c in created)


def test_images_shows_age_and_uncompressed_size(loaded: Path) -> None:
    header, row = _table(_strata(loaded, "images").stdout)
    assert header == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    assert row[:3] == ["localhost/uniontest", "1", IMAGE_ID[:12]]
    assert row[3].endswith(" ago")
    assert row[4] == "3.52 MB"
    (info,) = json.loads(_strata(loaded, "images", "--format", "json").stdout)
    assert info["Size"] == 3502080 + 9728 + 2560 + 5632  # the layers' tars


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["history", "-H=maybe", "uniontest:1"], 125, "expected true or false, not 'maybe'"),
        (["history", "nosuch:1"], 1, "no such image: nosuch:1"),
        (["history"], 125, "the following arguments are required: IMAGE"),
    ],
)
def test_bad_history_input_is_one_line(
    loaded: Path, args: list[str], code: int, message: str
) -> None:
    done = _strata(loaded, *args)
    assert done.returncode == code
    assert message in assert_one_line_error(done, "strata")


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[list[str]]:
    """podman on a private store (vfs, cgroupfs, no events), removed afterwards."""
    skip_unless_root()
    binary = shutil.which("podman")
    if binary is None:
        pytest.skip("podman is not installed")
    runroot = Path(tempfile.mkdtemp(prefix="strata-pr", dir="/tmp"))  # podman: < 50 characters
    base = [
        binary, "--root", str(tmp_path / "podman"), "--runroot", str(runroot),
        "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
    ]  # fmt: skip
    try:
        yield base
    finally:
        shutil.rmtree(tmp_path / "podman", ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def _podman(base: list[str], *args: str) -> str:
    done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.root
def test_history_and_images_match_podman(loaded: Path, podman: list[str]) -> None:
    """The same image loaded into podman: the same steps, sizes, comments and ages."""
    _podman(podman, "load", "-q", "-i", str(_archive("oci")))
    theirs = json.loads(_podman(podman, "history", "--format", "json", "localhost/uniontest:1"))
    ours = _table(_strata(loaded, "history", "--no-trunc", "-H=false", "uniontest:1").stdout)[1:]
    assert [row[2] for row in ours] == [h["CreatedBy"].rstrip() for h in theirs]
    assert [int(row[3]) for row in ours] == [h["size"] for h in theirs]
    assert [row[4] for row in ours] == [h["comment"] for h in theirs]
    assert [row[0].removeprefix("sha256:") for row in ours] == [h["id"] for h in theirs]
    human = _table(_strata(loaded, "history", "uniontest:1").stdout)[1:]
    podman_human = _table(_podman(podman, "history", "localhost/uniontest:1"))[1:]
    assert [(r[1], r[3]) for r in human] == [(r[1], r[3]) for r in podman_human]
    (_h, image), (_ph, podman_image) = (
        _table(_strata(loaded, "images").stdout),
        _table(_podman(podman, "images")),
    )
    assert image == podman_image  # REPOSITORY TAG IMAGE ID CREATED SIZE, cell for cell
