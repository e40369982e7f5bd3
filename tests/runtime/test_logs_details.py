"""`logs --details` as docker's: before each line the attributes that `--log-opt labels=`,
`labels-regex=`, `env=` and `env-regex=` chose from the container's labels and environment
(`k=v,k2=v2`, query-escaped), then a space; a space alone when there are none."""

from __future__ import annotations

import re

import pytest

from runtime import logshow
from tests.runtime.conftest import Strata
from tests.runtime.test_logs import STAMP


def test_attributes_as_dockers_extra_attributes() -> None:
    labels = {"team": "a", "x y": "p&q", "other": "o"}
    env = ["MODE=dev", "OTHER=1", "PATH=/bin", "NOVALUE"]
    opts = {"labels": "team,missing,x y", "env": "MODE", "env-regex": "^OTH"}
    found = logshow.log_attributes(opts, labels, env)
    assert found == {"team": "a", "x y": "p&q", "MODE": "dev", "OTHER": "1"}
    assert logshow.details_prefix(found) == b"MODE=dev,OTHER=1,team=a,x+y=p%26q "
    assert logshow.log_attributes({"labels-regex": "th"}, labels, env) == {"other": "o"}
    assert logshow.details_prefix({}) == b" "


def test_logs_details_prefix_each_line(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "--name", "d", "--label", "team=a", "-e", "MODE=dev",
        "--log-opt", "labels=team", "--log-opt", "env=MODE", "--log-opt", "max-size=1m",
        *busybox, "/bin/sh", "-c", "echo one; echo two >&2",
        check=True,
    )  # fmt: skip
    shown = strata.run("logs", "--details", "d", check=True)
    assert (shown.stdout, shown.stderr) == ("MODE=dev,team=a one\n", "MODE=dev,team=a two\n")
    stamped = strata.run("logs", "--details", "-t", "d", check=True)
    assert re.fullmatch(rf"{STAMP} MODE=dev,team=a one\n", stamped.stdout)
    assert strata.run("logs", "d", check=True).stdout == "one\n"
    config = strata.inspect("d")["HostConfig"]
    assert isinstance(config, dict)
    assert config["LogConfig"]["Config"] == {
        "max-size": str(1 << 20),
        "max-file": "1",
        "labels": "team",
        "env": "MODE",
    }
    strata.run("run", "--name", "plain", *busybox, "/bin/echo", "x", check=True)
    assert strata.run("logs", "--details", "plain", check=True).stdout == " x\n"


@pytest.mark.parametrize(
    ("opt", "message"),
    [
        ("env-regex=(", "strata: --log-opt env-regex=(: "),
        ("labels-regex=[", "strata: --log-opt labels-regex=[: "),
        ("tag=x", "strata: --log-opt tag=x: unknown log opt 'tag' for json-file"),
    ],
)
def test_bad_attribute_opts_are_one_line(
    strata: Strata, busybox: list[str], opt: str, message: str
) -> None:
    done = strata.run("create", "--log-opt", opt, *busybox, "/bin/true")
    assert done.returncode == 125
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1
    assert not strata.container_ids()
