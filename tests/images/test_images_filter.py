"""`strata images` with docker's `--filter`, `-a`, `--digests` and `images REPOSITORY[:TAG]`,
against podman on a private store where both were given the same steps: load the test image,
commit a container of it as a:1, commit a container of that as a:1 again (the first a:1 becomes
an untagged intermediate image), commit a container of the new a:1 without a name (a dangling
image)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE
from tests.helpers.podman import PrivatePodman
from tests.runtime.conftest import Strata

pytestmark = [pytest.mark.root, pytest.mark.fuse]

IMAGE = "localhost/uniontest:1"
STEPS = (
    ("create", "--name", "c1", IMAGE, "true"),
    ("commit", "c1", "a:1"),
    ("create", "--name", "c2", "a:1", "true"),
    ("commit", "c2", "a:1"),
    ("create", "--name", "c3", "a:1", "false"),  # (its own command: an image of its own,
    ("commit", "c3"),  # even within the second of the last commit)
)


@pytest.fixture
def images(strata: Strata) -> Strata:
    strata.run("load", "-q", "-i", str(BUSYBOX_DOCKER_ARCHIVE), check=True)
    for step in STEPS:
        strata.run(*step, check=True)
    return strata


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[PrivatePodman]:
    with PrivatePodman(tmp_path) as store:
        store.run("load", "-q", "-i", str(BUSYBOX_DOCKER_ARCHIVE))
        for command, *rest in STEPS:
            if command == "create":
                rest = ["--network", "none", *rest]
            store.run(command, *rest)
        try:
            yield store
        finally:
            subprocess.run(
                [*store.base, "rm", "-f", "c1", "c2", "c3"], capture_output=True, check=False
            )


FORMAT = ("--format", "{{.Repository}}:{{.Tag}}")


def listed(strata: Strata, *args: str) -> list[str]:
    """`strata images ARGS` as sorted name:tag lines (ids differ between the stores)."""
    return sorted(strata.run("images", *args, *FORMAT, check=True).stdout.splitlines())


FILTERS = (
    (),
    ("-a",),
    ("--filter", "dangling=true"),
    ("--filter", "dangling=false"),
    ("--filter", "before=a:1"),
    ("--filter", "since=uniontest:1"),
    ("--filter", "reference=a"),
    ("--filter", "label=io.buildah.version=1.28.2", "--filter", "dangling=false"),
    ("--filter", "label=nope"),
)


def test_images_filters_list_what_podman_lists(images: Strata, podman: PrivatePodman) -> None:
    """Every filter on the same two stores (made once: the steps take seconds each)."""
    for args in FILTERS:
        theirs = sorted(podman.run("images", *args, *FORMAT).splitlines())
        assert listed(images, *args) == theirs, args


def test_intermediate_and_dangling_images(images: Strata) -> None:
    """docker's rules: an untagged image with a child is an intermediate image, shown only
    with -a, where it counts as dangling too (podman counts it as not dangling)."""
    assert listed(images) == ["<none>:<none>", "localhost/a:1", "localhost/uniontest:1"]
    every = listed(images, "-a")
    assert every == ["<none>:<none>", "<none>:<none>", "localhost/a:1", "localhost/uniontest:1"]
    assert listed(images, "-a", "-f", "dangling=true") == ["<none>:<none>", "<none>:<none>"]
    # (podman lists the intermediate image under -a --filter dangling=false)
    assert listed(images, "-a", "-f", "dangling=false") == [
        "localhost/a:1",
        "localhost/uniontest:1",
    ]


def test_reference_patterns_match_names_as_docker(images: Strata) -> None:
    """path.Match globs (`*` stops at `/`) against the name and the name without strata's
    default `localhost/`; only the matching names of an image are listed."""
    images.run("tag", "a:1", "other/thing:v2", check=True)

    def names(*args: str) -> list[str]:
        done = images.run("images", *args, "--format", "{{.Repository}}:{{.Tag}}", check=True)
        return sorted(done.stdout.splitlines())

    assert names("-f", "reference=a:*") == ["localhost/a:1"]
    assert names("-f", "reference=*:1") == ["localhost/a:1", "localhost/uniontest:1"]
    assert names("-f", "reference=other/*") == ["other/thing:v2"]
    assert names("-f", "reference=*") == ["localhost/a:1", "localhost/uniontest:1"]
    assert names("-f", "reference=localhost/*") == ["localhost/a:1", "localhost/uniontest:1"]
    assert names("-f", "reference=a", "-f", "reference=other/thing") == [
        "localhost/a:1",
        "other/thing:v2",
    ]
    assert names("other/thing:v2") == ["other/thing:v2"]
    assert names("uniontest") == ["localhost/uniontest:1"]  # (a repository: each of its tags)
    assert names("uniontest:latest") == []


def test_digests_column_and_no_trunc(images: Strata) -> None:
    text = images.run("images", "--digests", "--no-trunc", "a", check=True).stdout
    header, row = text.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    repo, tag, digest, ident = row.split()[:4]
    assert (repo, tag, digest) == ("localhost/a", "1", "<none>")
    assert ident.startswith("sha256:")
    assert len(ident) == 71


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--filter", "nope=1"), "invalid filter 'nope'"),
        (("--filter", "dangling"), "bad format of filter 'dangling'"),
        (("--filter", "dangling=maybe"), "invalid filter 'dangling=maybe'"),
        (("--filter", "reference=[a"), "invalid reference pattern '[a'"),
    ],
)
def test_bad_filters_are_one_line_and_125(
    images: Strata, args: tuple[str, ...], message: str
) -> None:
    done = images.run("images", *args)
    assert done.returncode == 125
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"strata: {done.stderr.strip().removeprefix('strata: ')}"]
    assert message in done.stderr


def test_before_an_unknown_image_is_no_such_image(images: Strata) -> None:
    done = images.run("images", "--filter", "before=nothere:1")
    assert done.returncode == 1
    assert done.stderr.strip() == "strata: no such image: nothere:1"
