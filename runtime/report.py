"""What `ps` and `inspect` show (`logs`: runtime.logs)."""

from __future__ import annotations

import calendar
import shlex
import time
from collections.abc import Sequence

from .logs import LOG
from .state import CREATED, EXITED, RUNNING, ContainerDir


def _epoch(stamp: str) -> float | None:
    """Seconds since the epoch of a state timestamp (`2024-01-02T03:04:05.123456789Z`)."""
    if not stamp:
        return None
    try:
        base, _, frac = stamp.rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)


def _ago(stamp: str) -> str:
    then = _epoch(stamp)
    if then is None:
        return "?"
    return human_duration(time.time() - then)


def human_duration(seconds: float) -> str:
    """A span of time in docker's words (go-units' HumanDuration, which `docker ps`, `images`
    and `history` print, and podman's too): "Less than a second", "About a minute", "About an
    hour", "3 hours", "9 days", "3 weeks", "4 months", "2 years"."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def human_size(size: float) -> str:
    """A size in bytes as podman prints it (3 significant digits, powers of 1000: "3.52 MB",
    "5.63 kB", "0 B"; docker's go-units has the same numbers without the space)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000:
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} EB"


def text_table(lines: Sequence[Sequence[str]]) -> str:
    """Rows (the header first) laid out as docker's tabwriter does: each column as wide as its
    widest cell plus 3 spaces, the last column unpadded."""
    if not lines:
        return ""
    columns = len(lines[0])
    widths = [max(len(line[i]) for line in lines) for i in range(columns - 1)]
    return "".join(
        "".join(cell.ljust(w + 3) for cell, w in zip(line, widths, strict=False)) + line[-1] + "\n"
        for line in lines
    )


def describe(cdir: ContainerDir) -> dict[str, object]:
    """One container as `ps --format json` shows it."""
    from . import publish

    cfg = cdir.config
    state = cdir.effective_state()
    if state.status == RUNNING:
        status = f"Up {_ago(state.started_at)}"
    elif state.status == EXITED:
        code = "?" if state.exit_code is None else str(state.exit_code)
        status = f"Exited ({code}) {_ago(state.finished_at) + ' ago' if state.finished_at else ''}"
    else:
        status = "Created"
    return {
        "Id": cfg.id,
        "Names": [cfg.name],
        "Image": cfg.image,
        "Command": shlex.join(cfg.argv),
        "Created": cfg.created,
        "State": state.status,
        "Status": status.strip(),
        "ExitCode": state.exit_code,
        "Pid": state.init_pid if state.status == RUNNING else 0,
        "IPAddress": state.ip,
        "Ports": publish.ps_ports(cdir),
    }


def table(rows: Sequence[dict[str, object]], *, full: bool = False) -> str:
    headers = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")
    lines = [headers]
    for row in rows:
        command = str(row["Command"])
        if not full and len(command) > 22:
            command = command[:19] + "..."
        cid = str(row["Id"])
        names = row["Names"]
        assert isinstance(names, list)
        lines.append(
            (
                cid if full else cid[:12],
                str(row["Image"]),
                command,
                _ago(str(row["Created"])) + " ago",
                str(row["Status"]),
                str(row.get("Ports", "")),
                ",".join(str(n) for n in names),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "".join(
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def inspect(cdir: ContainerDir) -> dict[str, object]:
    """One container as `inspect` shows it: its config, state and paths."""
    from . import capabilities, mounts, publish, security

    cfg = cdir.config
    state = cdir.effective_state()
    caps = capabilities.sorted_names(capabilities.recorded(cfg.capabilities))
    ports = publish.inspect_fields(cdir)
    return {
        "Id": cfg.id,
        "Name": cfg.name,
        "Created": cfg.created,
        "Image": cfg.image,
        # podman's names: what the command holds (none for a user other than root), and the
        # bounding set of every process of the container
        "EffectiveCaps": caps if capabilities.runs_as_root(cfg.user) else [],
        "BoundingCaps": caps,
        "State": {
            "Status": state.status,
            "Running": state.status == RUNNING,
            "Pid": state.init_pid if state.status == RUNNING else 0,
            "MonitorPid": state.monitor_pid if state.status == RUNNING else 0,
            "DaemonPid": state.daemon_pid if state.status == RUNNING else 0,
            "ExitCode": state.exit_code,
            "StartedAt": state.started_at,
            "FinishedAt": state.finished_at,
        },
        "Config": {
            "Cmd": list(cfg.argv),
            "Env": list(cfg.env),
            "WorkingDir": cfg.workdir,
            "User": cfg.user,
            "Hostname": cfg.hostname,
            "Tty": cfg.tty,
            "OpenStdin": cfg.interactive,
            "Init": cfg.init,
            "AutoRemove": cfg.auto_remove,
            "ExposedPorts": ports["ExposedPorts"],
        },
        "HostConfig": {
            "NetworkMode": cfg.network,
            "Subnet": cfg.subnet,
            "PortBindings": ports["PortBindings"],
            "PublishAllPorts": cfg.publish_all,
            "ReadonlyRootfs": cfg.read_only,
            "Binds": [f"{v.source}:{v.target}{':ro' if v.read_only else ''}" for v in cfg.volumes],
            "Rootless": cfg.rootless,
            "IdMap": cfg.id_map,
            "Privileged": cfg.privileged,
            "CapAdd": list(cfg.cap_add),
            "CapDrop": list(cfg.cap_drop),
            "SecurityOpt": list(cfg.security_opt),
            "Seccomp": security.describe(cfg.seccomp, cfg.seccomp_origin),
            "NoNewPrivileges": cfg.no_new_privileges,
            "MaskedPaths": list(mounts.MASKED_PATHS) if cfg.mask_paths else [],
            "ReadonlyPaths": list(mounts.READONLY_PATHS) if cfg.mask_paths else [],
        },
        "NetworkSettings": {
            "IPAddress": state.ip,
            "Ports": ports["Ports"],
            # docker's per-network entry, for the bridge networks (the default or a user one)
            "Networks": {
                cfg.network: {
                    "NetworkID": cfg.network_id,
                    "IPAddress": state.ip,
                    "Aliases": list(cfg.network_aliases),
                }
            }
            if cfg.network not in ("none", "host") and not cfg.network.startswith("container:")
            else {},
        },
        "GraphDriver": {
            "Name": "strata",
            "Data": {
                "LowerDir": ":".join([str(cdir.sub("init")), *cfg.layers]),
                "UpperDir": "" if cfg.read_only else str(cdir.sub("upper")),
                "WorkDir": "" if cfg.read_only else str(cdir.sub("work")),
                "MergedDir": str(cdir.rootfs),
            },
        },
        "LogPath": str(cdir.sub(LOG)),
        "Path": str(cdir.path),
    }


__all__ = ["CREATED", "describe", "human_duration", "human_size", "inspect", "table", "text_table"]
