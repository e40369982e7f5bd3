"""What `ps` and `inspect` show (`logs`: runtime.logs)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence

from unionfs.errors import UsageError

from .logs import LOG
from .state import (
    CREATED,
    EXITED,
    RUNNING,
    ContainerDir,
    ContainerState,
    Volume,
    epoch,
    process_alive,
)


def _ago(stamp: str) -> str:
    then = epoch(stamp)
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
        status = f"Up {_ago(state.started_at)}" + (" (Paused)" if state.paused else "")
        if not state.paused:  # docker's "(healthy)", "(health: starting)", "(unhealthy)"
            status += _health_suffix(cdir)
    elif state.restarting and state.status == EXITED:
        code = "?" if state.exit_code is None else str(state.exit_code)
        status = f"Restarting ({code}) {_ago(state.finished_at)} ago"
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
        "State": _status(state),
        "Status": status.strip(),
        "ExitCode": state.exit_code,
        "Pid": state.init_pid if state.status == RUNNING else 0,
        "IPAddress": state.ip,
        "Ports": publish.ps_ports(cdir),
    }


def _health_suffix(cdir: ContainerDir) -> str:
    from . import health

    current = health.status(cdir)
    if current == health.NONE:
        return ""
    return " (health: starting)" if current == health.STARTING else f" ({current})"


def _status(state: ContainerState) -> str:
    """docker's State.Status: created, running, paused, restarting, exited."""
    if state.status == RUNNING and state.paused:
        return "paused"
    if state.status == EXITED and state.restarting:
        return "restarting"
    return state.status


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
            "Status": _status(state),
            "Running": state.status == RUNNING,
            "Paused": state.status == RUNNING and state.paused,
            "Restarting": state.status == EXITED and state.restarting,
            "Pid": state.init_pid if state.status == RUNNING else 0,
            "MonitorPid": state.monitor_pid if state.status == RUNNING else 0,
            "DaemonPid": state.daemon_pid if state.status == RUNNING else 0,
            "ExitCode": state.exit_code,
            "StartedAt": state.started_at,
            "FinishedAt": state.finished_at,
        }
        | _health_of(cdir),
        "RestartCount": state.restart_count,
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
            "Labels": cfg.labels,
            "StopSignal": cfg.stop_signal or "SIGTERM",
            "StopTimeout": 10 if cfg.stop_timeout is None else cfg.stop_timeout,
        }
        | ({"Healthcheck": cfg.healthcheck} if cfg.healthcheck is not None else {}),
        "HostConfig": {
            "NetworkMode": cfg.network,
            "Subnet": cfg.subnet,
            "PortBindings": ports["PortBindings"],
            "PublishAllPorts": cfg.publish_all,
            "ReadonlyRootfs": cfg.read_only,
            "RestartPolicy": {
                "Name": cfg.restart_policy,
                "MaximumRetryCount": cfg.restart_retries,
            },
            "Ulimits": [_ulimit_of(u) for u in cfg.ulimits],
            "ShmSize": cfg.shm_size or 64 << 20,
            "NanoCpus": cfg.cpu_quota * 10_000,
            "GroupAdd": list(cfg.group_add),
            "UsernsMode": cfg.userns,
            # --userns keep-id: podman's field, "inside:outside:count" in the rootless namespace
            **(
                {
                    "IDMappings": {
                        key: [":".join(map(str, r)) for r in cfg.userns_map[src]]
                        for key, src in (("UidMap", "uids"), ("GidMap", "gids"))
                    }
                }
                if cfg.userns_map
                else {}
            ),
            "LogConfig": {
                "Type": "k8s-file",
                "Config": (
                    {"max-size": str(cfg.log_max_size), "max-file": str(cfg.log_max_file)}
                    if cfg.log_max_size
                    else {}
                )
                | cfg.log_attr_opts,
            },
            "Devices": [
                {
                    "PathOnHost": v.source,
                    "PathInContainer": v.target,
                    "CgroupPermissions": v.options,
                }
                for v in cfg.volumes
                if v.kind == "device"
            ],
            "Binds": [
                f"{v.source if v.kind == 'bind' else v.name}:{v.target}{':ro' if v.read_only else ''}"
                for v in cfg.volumes
                if v.kind == "bind" or (v.kind == "volume" and not v.anonymous)
            ],
            "Tmpfs": {v.target: v.options for v in cfg.volumes if v.kind == "tmpfs"},
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
        "Mounts": [_mount_of(v) for v in cfg.volumes if v.kind in ("bind", "volume")],
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


def _health_of(cdir: ContainerDir) -> dict[str, object]:
    """docker's `State.Health` (runtime.health), once a check has been started."""
    from . import health

    current = health.shown(cdir)
    return {"Health": current} if current is not None else {}


def _ulimit_of(item: str) -> dict[str, object]:
    """docker's `HostConfig.Ulimits` entry of a recorded `NAME=SOFT:HARD`."""
    name, _, values = item.partition("=")
    soft, _, hard = values.partition(":")
    return {"Name": name, "Soft": int(soft), "Hard": int(hard)}


def _mount_of(volume: Volume) -> dict[str, object]:
    """One entry of docker's `Mounts` (binds and volumes; docker lists tmpfs only in
    HostConfig.Tmpfs)."""
    entry: dict[str, object] = {"Type": volume.kind}
    if volume.kind == "volume":
        entry |= {"Name": volume.name, "Driver": "local"}
    return entry | {
        "Source": volume.source,
        "Destination": volume.target,
        "Mode": "ro" if volume.read_only else "",
        "RW": not volume.read_only,
        "Propagation": "rprivate" if volume.kind == "bind" else "",
    }


def top(cdir: ContainerDir, ps_args: Sequence[str]) -> str:
    """`strata top`: the host's `ps` with `ps_args` (docker's default `-ef`), keeping the
    header and the rows of the container's processes (its PID namespace, found by PID 1), as
    docker filters `ps` by the PIDs of the container's cgroup."""
    import subprocess

    from .pause import container_pids

    state = cdir.effective_state()
    if state.status != RUNNING or not process_alive(state.init_pid, state.init_start):
        raise UsageError(f"container {cdir.name} is not running", 1)
    pids = {str(p) for p in container_pids(state.init_pid)}
    try:
        done = subprocess.run(
            ["ps", *ps_args], capture_output=True, text=True, check=False, timeout=30
        )
    except FileNotFoundError:
        raise UsageError("top needs ps (Debian: procps)", 125) from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["failed"])[0]
        raise UsageError(f"ps {' '.join(ps_args)}: {message}", 1)
    lines = done.stdout.splitlines()
    if not lines or "PID" not in lines[0].split():
        raise UsageError(f"ps {' '.join(ps_args)}: no PID column in its output", 1)
    column = lines[0].split().index("PID")
    rows = [line for line in lines[1:] if _field(line, column) in pids]
    return "\n".join([lines[0], *rows]) + "\n"


def _field(line: str, index: int) -> str:
    fields = line.split()
    return fields[index] if index < len(fields) else ""


__all__ = [
    "CREATED",
    "describe",
    "human_duration",
    "human_size",
    "inspect",
    "table",
    "text_table",
    "top",
]
