"""The rows `--format` templates see in the runtime's lists, with docker's field names and
column names: `ps` (docker's ContainerContext), `stats` (statsContext), `volume ls`
(volumeContext), `network ls` (networkContext); and `inspect`'s `-f` (the JSON it shows, a
missing key an error as in docker's fallback to the raw JSON). The evaluator is
runtime.gotemplate; images/cli.py has the rows of `images` and `history`."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .gotemplate import Fields
    from .state import ContainerDir, StateRoot
    from .volumes import VolumeInfo


FORMAT_HELP: Final = (
    "a Go template ({{.ID}}, 'table {{.ID}}\\t{{.Names}}', {{json .}}), or json / table"
)


def is_template(fmt: str | None) -> bool:
    """Whether --format is a template (anything but the words `table` and `json`, which each
    command prints its own way). (Here, not in runtime.gotemplate, so that the commands'
    parsers need not import the evaluator.)"""
    return fmt is not None and fmt not in ("", "table", "json")


def check(fmt: str | None, *, listing: bool = True) -> None:
    """Refuse a --format template that does not parse (TemplateError, 125) before a command
    does anything; `listing`: a list's format (`table ...`, `\\t`), else inspect's."""
    if not is_template(fmt):
        return
    assert fmt is not None
    from .gotemplate import check_format, parse

    if listing:
        check_format(fmt)
    else:
        parse(fmt)


def labels_text(labels: Mapping[str, str]) -> str:
    """docker's `.Labels` of a row: `k=v,k2=v2` (sorted here; docker's map order varies)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _label(labels: Mapping[str, str]) -> object:
    """docker's `.Label NAME` method: that label's value, "" without it."""
    return lambda name: labels.get(str(name), "")


def _seconds(stamp: str) -> int | None:
    """Seconds since the epoch of an RFC 3339 time (None: none or not one)."""
    from .logshow import parse_rfc3339

    try:
        return parse_rfc3339(stamp) // 10**9
    except (ValueError, OverflowError):
        return None


def go_time(stamp: str) -> str:
    """docker's `.CreatedAt`: Go's time.String() of the second, in local time
    (`2024-01-02 03:04:05 +0000 UTC`); "" for no time."""
    seconds = _seconds(stamp)
    if seconds is None:
        return ""
    local = time.localtime(seconds)
    return time.strftime("%Y-%m-%d %H:%M:%S %z ", local) + (local.tm_zone or "")


def write(fmt: str, rows: Sequence[Mapping[str, object]], headers: Mapping[str, object]) -> None:
    """Print the rows through `--format` (runtime.gotemplate.render)."""
    from .gotemplate import render

    sys.stdout.write(render(fmt, rows, headers))
    sys.stdout.flush()


# -- ps ------------------------------------------------------------------------------------

PS_HEADERS: Final[Mapping[str, object]] = {
    "ID": "CONTAINER ID",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "State": "STATE",
    "Status": "STATUS",
    "Size": "SIZE",
    "Names": "NAMES",
    "Labels": "LABELS",
    "Label": lambda *_: "LABEL",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "LocalVolumes": "LOCAL VOLUMES",
}


def ps_fields(cdir: ContainerDir, info: Mapping[str, object], *, full: bool) -> Fields:
    """One container as `ps --format` sees it (docker's ContainerContext)."""
    from .gotemplate import Fields
    from .report import human_duration

    cfg = cdir.config
    command = str(info["Command"])
    if not full and len(command) > 20:
        command = command[:19] + "…"
    created = _seconds(cfg.created)
    network = cfg.network
    return Fields(
        "ContainerContext",
        {
            "ID": cfg.id if full else cfg.id[:12],
            "Image": cfg.image,
            "Command": _go_quote(command),
            "CreatedAt": go_time(cfg.created),
            "RunningFor": "" if created is None else human_duration(time.time() - created) + " ago",
            "Ports": str(info.get("Ports", "")),
            "State": str(info["State"]),
            "Status": str(info["Status"]),
            "Size": "N/A",
            "Names": cfg.name,
            "Labels": labels_text(cfg.labels),
            "Label": _label(cfg.labels),
            "Mounts": ",".join(
                v.name if v.kind == "volume" else v.source
                for v in cfg.volumes
                if v.kind in ("bind", "volume")
            ),
            "Networks": "" if network.startswith("container:") else network,
            "LocalVolumes": str(sum(1 for v in cfg.volumes if v.kind == "volume")),
        },
    )


def _go_quote(text: str) -> str:
    """Go's strconv.Quote for the printable text a command is."""
    import json

    return json.dumps(text, ensure_ascii=False)


# -- stats ---------------------------------------------------------------------------------

STATS_HEADERS: Final[Mapping[str, object]] = {
    "Container": "CONTAINER",
    "Name": "NAME",
    "ID": "CONTAINER ID",
    "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT",
    "MemPerc": "MEM %",
    "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O",
    "PIDs": "PIDS",
}


def stats_fields(given: str, row: Sequence[str]) -> Fields:
    """One line of `stats` (runtime.stats.row) as `stats --format` sees it (docker's
    statsContext); `given`: the name or id the container was asked for by (docker's
    `.Container`), its id when none was."""
    from .gotemplate import Fields

    cid, name, cpu, mem, mem_perc, net, block, pids = row
    return Fields(
        "statsContext",
        {
            "Container": given or cid,
            "Name": name,
            "ID": cid,
            "CPUPerc": cpu,
            "MemUsage": mem,
            "MemPerc": mem_perc,
            "NetIO": net,
            "BlockIO": block,
            "PIDs": pids,
        },
    )


# -- volume ls, network ls -----------------------------------------------------------------

VOLUME_HEADERS: Final[Mapping[str, object]] = {
    "Name": "VOLUME NAME",
    "Driver": "DRIVER",
    "Scope": "SCOPE",
    "Mountpoint": "MOUNTPOINT",
    "Labels": "LABELS",
    "Label": lambda *_: "LABEL",
    "Links": "LINKS",
    "Size": "SIZE",
    "CreatedAt": "CREATED AT",
}


def volume_fields(info: VolumeInfo, links: int) -> Fields:
    """One volume as `volume ls --format` sees it (docker's volumeContext)."""
    from .gotemplate import Fields

    shown = info.inspect()
    labels = shown["Labels"]
    assert isinstance(labels, dict)
    return Fields(
        "volumeContext",
        {
            "Name": info.name,
            "Driver": "local",
            "Scope": "local",
            "Mountpoint": str(info.data),
            "Labels": labels_text(labels),
            "Label": _label(labels),
            "Links": str(links),
            "Size": "N/A",
            "CreatedAt": go_time(info.created),
        },
    )


NETWORK_HEADERS: Final[Mapping[str, object]] = {
    "ID": "NETWORK ID",
    "Name": "NAME",
    "Driver": "DRIVER",
    "Scope": "SCOPE",
    "IPv6": "IPV6",
    "Internal": "INTERNAL",
    "Labels": "LABELS",
    "Label": lambda *_: "LABEL",
    "CreatedAt": "CREATED AT",
}


def network_fields(root: StateRoot, name: str, *, full: bool = False) -> Fields:
    """One network as `network ls --format` sees it (docker's networkContext)."""
    from .gotemplate import Fields
    from .networks import inspect

    shown = inspect(root, name)
    labels = shown.get("Labels") or {}
    assert isinstance(labels, dict)
    ident = str(shown["Id"])
    return Fields(
        "networkContext",
        {
            "ID": ident if full else ident[:12],
            "Name": name,
            "Driver": str(shown["Driver"]),
            "Scope": str(shown["Scope"]),
            "IPv6": "true" if shown.get("EnableIPv6") else "false",
            "Internal": "true" if shown.get("Internal") else "false",
            "Labels": labels_text(labels),
            "Label": _label(labels),
            "CreatedAt": go_time(str(shown.get("Created") or "")),
        },
    )


# -- inspect -------------------------------------------------------------------------------


def print_inspected(fmt: str | None, found: Sequence[object], *, indent: int = 2) -> None:
    """`inspect`'s output: the JSON array, or with `-f TEMPLATE` the template's text for each
    object on a line of its own (a key the object does not have is an error, as docker's)."""
    import json

    if fmt is None or not is_template(fmt):
        print(json.dumps(found, indent=indent))
        return
    from .gotemplate import parse

    template = parse(fmt)
    text = "".join(template.execute(item, missing_key_error=True) + "\n" for item in found)
    sys.stdout.write(text)
    sys.stdout.flush()


__all__ = [
    "FORMAT_HELP",
    "NETWORK_HEADERS",
    "PS_HEADERS",
    "STATS_HEADERS",
    "VOLUME_HEADERS",
    "check",
    "go_time",
    "is_template",
    "labels_text",
    "network_fields",
    "print_inspected",
    "ps_fields",
    "stats_fields",
    "volume_fields",
    "write",
]
