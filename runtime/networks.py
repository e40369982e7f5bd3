"""User networks, as docker's: `strata network create|ls|inspect|rm|prune`, and what a container
on one needs when it starts and exits (its bridge, its address, its DNS names).

A user network is a definition in the state root, `networks/<name>.json` (written atomically
under the state lock): name, id (64 hex digits), creation time, subnet and gateway. Its bridge
is `stbr` + the id's first 10 hex digits, made by `create` (as docker makes its bridges at
`network create`) and again when a container starts should `network prune` of another state
root have taken it; runtime.network's table `ip strata` masquerades it and drops traffic between
it and any other strata bridge, so that networks are isolated from each other and from the
default `bridge`.

Subnets are picked from 10.91.0.0/16 as /24s: the first that overlaps no strata bridge on the
host (whichever state root made it), no definition of this root, no host route (`ip -j route`)
and not the default network's 10.90.0.0/16. `--subnet` must overlap none of them either.

Names: containers on one user network find each other by container name, short id (12 hex
digits), hostname and `--network-alias`, through runtime.dns's server on the network's gateway.
Its state is host-side, per boot, in /run/strata/dns/<bridge>/ (`records`, the server's pid
file). The records are rewritten from this root's running containers of the network whenever
one starts or exits (state lock held); the server starts with the network's first container
and stops with its last, and `tidy` (from `rm` and `network prune`) stops what a monitor killed
with SIGKILL left. The server forwards every other name to the host's resolv.conf servers
(loopback ones too: it runs on the host). A container's resolv.conf names the gateway, with
search domain `dns.strata` before the host's (as podman's `dns.podman`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from unionfs.errors import UsageError

from . import network
from .state import RUNNING, ContainerConfig, ContainerDir, StateRoot, now, read_json, write_json

BUILTIN: Final = ("bridge", "host", "none")
DRIVERS: Final = {"bridge": "bridge", "host": "host", "none": "null"}
POOL: Final = ipaddress.IPv4Network("10.91.0.0/16")
POOL_PREFIX: Final = 24
DNS_DIR: Final = network.RUN_DIR / "dns"
SEARCH_DOMAIN: Final = "dns.strata"

_NAME: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_HEX: Final = frozenset("0123456789abcdef")


class NetworkDef(NamedTuple):
    """One user network (`networks/<name>.json`). (NamedTuples, not dataclasses: making a
    dataclass costs a module import ~3 ms, and the monitor imports this one.)"""

    name: str
    id: str
    created: str
    subnet: str
    gateway: str

    @property
    def bridge(self) -> str:
        return network.USER_BRIDGE_PREFIX + self.id[:10]

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gw(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.gateway)

    @property
    def dns_dir(self) -> Path:
        return DNS_DIR / self.bridge

    @classmethod
    def from_json(cls, data: dict[str, object]) -> NetworkDef:
        return cls(**{k: str(data[k]) for k in cls._fields})


def builtin_id(name: str) -> str:
    """A fixed id for the built-in networks (docker shows ids for them too)."""
    import hashlib  # only here: its OpenSSL costs `strata run` 4 ms

    return hashlib.sha256(f"strata network {name}".encode()).hexdigest()


# -- checks


def check_name(name: str) -> None:
    """A network name as docker takes it, and not one of the built-in networks."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"invalid network name {name!r}: letters, digits, '_', '.' and '-' (not first),"
            " at most 128",
            125,
        )
    if name in BUILTIN:
        raise UsageError(f"network name {name} is reserved for a built-in network", 125)


def valid_alias(name: str) -> bool:
    """Whether `name` can be a `--network-alias` (a name the DNS server answers)."""
    return bool(_NAME.fullmatch(name))


def parse_gateway(text: str, net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """`--gateway IP`: an address of `net` a container could have (not the network or the
    broadcast address)."""
    try:
        gw = ipaddress.IPv4Address(text)
    except ValueError:
        raise UsageError(f"--gateway {text}: not an IPv4 address", 125) from None
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise UsageError(f"--gateway {text}: not a host address of subnet {net}", 125)
    return gw


def pick_subnet(
    used: Iterable[ipaddress.IPv4Network],
    pool: ipaddress.IPv4Network = POOL,
    prefix: int = POOL_PREFIX,
) -> ipaddress.IPv4Network:
    """The first /`prefix` of `pool` that overlaps none of `used`."""
    taken = list(used)
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(u) for u in taken):
            return candidate
    raise UsageError(f"no free subnet left in {pool}: give one with --subnet", 125)


def host_routes() -> list[ipaddress.IPv4Network]:
    """The destinations of the host's IPv4 routes but the default one (`ip -j -4 route`)."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    done = subprocess.run(
        [ip, "-j", "-4", "route", "show"], capture_output=True, text=True, check=False
    )
    try:
        routes = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
    except ValueError:
        routes = []
    found = []
    for route in routes if isinstance(routes, list) else []:
        dst = route.get("dst", "") if isinstance(route, dict) else ""
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


# -- definitions


def _dir(root: StateRoot) -> Path:
    return root.path / "networks"


def definitions(root: StateRoot) -> list[NetworkDef]:
    """This root's user networks, oldest first (no lock needed: files are replaced whole)."""
    found = []
    try:
        names = os.listdir(_dir(root))
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            found.append(NetworkDef.from_json(read_json(_dir(root) / name)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    found.sort(key=lambda d: d.created)
    return found


def find(root: StateRoot, ref: str) -> NetworkDef | None:
    """A user network by name, full id or unique id prefix; None if there is none."""
    defs = definitions(root)
    for d in defs:
        if ref in (d.name, d.id):
            return d
    if ref and set(ref) <= _HEX:
        matches = [d for d in defs if d.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
    return None


def find_by_id(root: StateRoot, network_id: str) -> NetworkDef | None:
    return next((d for d in definitions(root) if d.id == network_id), None)


def users(root: StateRoot, defn: NetworkDef) -> list[ContainerDir]:
    """This root's containers on `defn`, running or not."""
    return [c for c in root.containers() if c.config.network_id == defn.id]


def members(root: StateRoot, defn: NetworkDef, *, exclude: str = "") -> list[ContainerDir]:
    """This root's running containers on `defn`, but `exclude`."""
    return [
        c
        for c in users(root, defn)
        if c.id != exclude and c.effective_state().status == RUNNING and c.read_state().ip
    ]


def _used_subnets(root: StateRoot) -> list[ipaddress.IPv4Network]:
    used = [ipaddress.IPv4Network(network.DEFAULT_SUBNET)]
    for addrs in network.strata_bridges().values():
        used += [a.network for a in addrs]
    used += [d.net for d in definitions(root)]
    used += host_routes()
    return used


def create(root: StateRoot, name: str, subnet: str = "", gateway: str = "") -> NetworkDef:
    """`strata network create`: check everything, write the definition, make the bridge."""
    if os.geteuid() != 0:
        raise UsageError("user networks need root (their bridges are the host's)", 125)
    check_name(name)
    net = network.parse_subnet(subnet) if subnet else None
    if net is not None and ipaddress.IPv4Interface(subnet).ip != net.network_address:
        raise UsageError(f"--subnet {subnet}: host bits set, it should be {net}", 125)
    if gateway and net is None:
        raise UsageError("--gateway needs --subnet", 125)
    with root.lock():
        if any(d.name == name for d in definitions(root)):
            raise UsageError(f"network with name {name} already exists", 125)
        with network.host_lock():
            used = _used_subnets(root)
            if net is None:
                net = pick_subnet(used)
            else:
                clash = next((u for u in used if u.overlaps(net)), None)
                if clash is not None:
                    raise UsageError(f"--subnet {subnet}: overlaps {clash} in use", 125)
            gw = parse_gateway(gateway, net) if gateway else network.gateway(net)
            defn = NetworkDef(
                name=name,
                id=os.urandom(32).hex(),
                created=now(),
                subnet=str(net),
                gateway=str(gw),
            )
            _dir(root).mkdir(mode=0o700, exist_ok=True)
            write_json(_dir(root) / f"{name}.json", defn._asdict())
            try:
                network.ensure_bridge(defn.net, defn.bridge, defn.gw)
            except BaseException:
                (_dir(root) / f"{name}.json").unlink()
                raise
    return defn


def remove(root: StateRoot, ref: str) -> NetworkDef:
    """`strata network rm`: refused while any container (running or not) is on it; else its
    bridge, its DNS server and records, and its definition go. Call without the lock."""
    if ref in BUILTIN:
        raise UsageError(f"{ref} is a pre-defined network and cannot be removed", 125)
    with root.lock():
        defn = find(root, ref)
        if defn is None:
            raise UsageError(f"no such network: {ref}", 1)
        using = users(root, defn)
        if using:
            names = ", ".join(c.name for c in using)
            raise UsageError(
                f"network {defn.name} is in use by container(s) {names}: remove them first", 125
            )
        _remove(root, defn)
    return defn


def _remove(root: StateRoot, defn: NetworkDef) -> None:
    if os.geteuid() == 0:
        stop_dns(defn)
        network.remove_bridge(defn.bridge)
    with contextlib.suppress(FileNotFoundError):
        (_dir(root) / f"{defn.name}.json").unlink()


def prune(root: StateRoot) -> list[str]:
    """`strata network prune`: the user networks no container uses, then what a monitor killed
    with SIGKILL left (DNS records and servers), then runtime.network's prune. What went."""
    removed = []
    with root.lock():
        for defn in definitions(root):
            if not users(root, defn):
                _remove(root, defn)
                removed.append(defn.name)
        removed += tidy(root)
        removed += network.prune(root)
        from .dns import dns_tidy

        if dns_tidy(root):  # the default bridge's forwarder (runtime.dns)
            removed.append("DNS forwarder")
        with network.host_lock():  # the forwarder's records and users went with the bridge
            run_dir = network.RUN_DIR / "dns" / network.BRIDGE
            if not os.path.exists(f"/sys/class/net/{network.BRIDGE}") and run_dir.is_dir():
                shutil.rmtree(run_dir, ignore_errors=True)
    return removed


# -- a container on a user network


class Attachment(NamedTuple):
    """Where a bridge container goes: the default `bridge` or a user network (`defn`)."""

    bridge: str
    net: ipaddress.IPv4Network
    gw: ipaddress.IPv4Address
    defn: NetworkDef | None = None


def attachment(root: StateRoot, cfg: ContainerConfig) -> Attachment | None:
    """The bridge network `cfg`'s container joins, resolved now (at start): None for none, host
    and the like. A user network that is gone is a one-line error."""
    if cfg.network == "bridge":
        net = network.parse_subnet(cfg.subnet)
        return Attachment(network.BRIDGE, net, network.gateway(net))
    if not cfg.network_id:
        return None
    defn = find_by_id(root, cfg.network_id)
    if defn is None:
        raise UsageError(f"network {cfg.network} not found", 125)
    return Attachment(defn.bridge, defn.net, defn.gw, defn)


def dns_names(cdir: ContainerDir) -> list[str]:
    """A container's names on its user network, as docker's: name, short id, hostname (when it
    is not the short id), aliases."""
    cfg = cdir.config
    names = [cfg.name, cfg.id[:12], cfg.hostname, *cfg.network_aliases]
    return list(dict.fromkeys(n for n in names if n))


def update_dns(
    root: StateRoot, defn: NetworkDef, *, exclude: str = "", start: bool = False
) -> None:
    """Rewrite the network's records from its running containers (but `exclude`, on its way
    out); with `start`, make sure the server runs. With none left the server stays, with no
    names, as the bridge does (its ~60 ms start would land on every lone `run --rm`); `network
    rm` and `prune` stop it. Call as root with the state lock held, the bridge up."""
    from . import dns

    entries = [(c.read_state().ip, dns_names(c)) for c in members(root, defn, exclude=exclude)]
    if not entries and not defn.dns_dir.exists():
        return
    defn.dns_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    records = defn.dns_dir / "records"
    dns.write_records(records, entries)
    if start:
        dns.start(defn.dns_dir, defn.gateway, records, host_nameservers())


def stop_dns(defn: NetworkDef) -> bool:
    """Stop the network's DNS server and remove its state; whether a server was running."""
    if not defn.dns_dir.exists():
        return False
    from . import dns

    was = dns.stop(defn.dns_dir)
    shutil.rmtree(defn.dns_dir, ignore_errors=True)
    return was


def tidy(root: StateRoot, *, exclude: str = "", stop: bool = True) -> list[str]:
    """What monitors killed with SIGKILL left of this root's user networks: records of
    containers that do not run; with `stop` (`network prune`), the servers of networks none
    runs on. Call as root with the state lock held."""
    stopped = []
    for defn in definitions(root):
        if not defn.dns_dir.exists():
            continue
        if members(root, defn, exclude=exclude) or not stop:
            with contextlib.suppress(OSError, UsageError):
                update_dns(root, defn, exclude=exclude)
        elif stop_dns(defn):
            stopped.append(f"DNS server of {defn.name}")
    return stopped


def host_nameservers(text: str | None = None) -> list[str]:
    """The host's resolv.conf servers, all of them (the DNS server runs on the host, so a
    loopback stub serves it too)."""
    if text is None:
        text = network.host_resolv_conf()
    return [str(server).split("%")[0] for server in network.nameservers(text)]


def resolv_conf(
    gw: str,
    *,
    dns: Sequence[str] = (),
    search: Sequence[str] = (),
    options: Sequence[str] = (),
    host: str | None = None,
) -> str:
    """A user network container's resolv.conf: the gateway's DNS server (then `--dns`
    servers), search `dns.strata` then the host's domains (or `--dns-search`'s; `.` for none),
    the host's options (or `--dns-option`'s)."""
    text = network.host_resolv_conf() if host is None else host
    host_search: list[str] = []
    host_options: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in ("search", "domain"):
            host_search = fields[1:]
        elif fields and fields[0] == "options":
            host_options += fields[1:]
    domains = [d for d in search if d != "."] if search else host_search
    lines = [f"nameserver {server}" for server in (gw, *dns)]
    lines.append("search " + " ".join(dict.fromkeys([SEARCH_DOMAIN, *domains])))
    opts = list(options) if options else host_options
    if opts:
        lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


# -- reports


def _containers_of(root: StateRoot, name: str, defn: NetworkDef | None) -> dict[str, object]:
    prefix = defn.net.prefixlen if defn else network.parse_subnet(network.DEFAULT_SUBNET).prefixlen
    found: dict[str, object] = {}
    for c in root.containers():
        on = c.config.network_id == defn.id if defn else c.config.network == name
        state = c.effective_state()
        if on and state.status == RUNNING:
            ip = c.read_state().ip
            found[c.id] = {
                "Name": c.name,
                "IPv4Address": f"{ip}/{prefix}" if ip else "",
                "IPv6Address": "",
            }
    return found


def inspect(root: StateRoot, ref: str) -> dict[str, object]:
    """docker's `network inspect` shape for one network (UsageError, exit 1, if unknown)."""
    if ref in BUILTIN:
        config: list[dict[str, str]] = []
        if ref == "bridge":
            net = network.parse_subnet(network.DEFAULT_SUBNET)
            config = [{"Subnet": str(net), "Gateway": str(network.gateway(net))}]
        return {
            "Name": ref,
            "Id": builtin_id(ref),
            "Created": "",
            "Scope": "local",
            "Driver": DRIVERS[ref],
            "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": {}, "Config": config},
            "Internal": False,
            "Attachable": False,
            "Containers": _containers_of(root, ref, None) if ref == "bridge" else {},
            "Options": {"com.docker.network.bridge.name": network.BRIDGE}
            if ref == "bridge"
            else {},
            "Labels": {},
        }
    defn = find(root, ref)
    if defn is None:
        raise UsageError(f"no such network: {ref}", 1)
    return {
        "Name": defn.name,
        "Id": defn.id,
        "Created": defn.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": False,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{"Subnet": defn.subnet, "Gateway": defn.gateway}],
        },
        "Internal": False,
        "Attachable": False,
        "Containers": _containers_of(root, defn.name, defn),
        "Options": {"com.docker.network.bridge.name": defn.bridge},
        "Labels": {},
    }


def listing(root: StateRoot) -> list[tuple[str, str, str, str]]:
    """`network ls` rows (NETWORK ID, NAME, DRIVER, SCOPE), by name as docker sorts them."""
    rows = [(builtin_id(n)[:12], n, DRIVERS[n], "local") for n in BUILTIN]
    rows += [(d.id[:12], d.name, "bridge", "local") for d in definitions(root)]
    return sorted(rows, key=lambda r: r[1])
