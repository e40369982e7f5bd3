"""Published ports while a container runs: the host ports it holds and the nftables rules that
forward them to it (`-p`, `-P`; the parsing is runtime.ports).

**Reservation.** When the container starts, its monitor binds a socket for each published
(host address, host port, protocol), as podman's conmon and docker-proxy hold them, and keeps it
until the container has stopped: another program cannot take the port meanwhile, a port in use
fails the start before anything of the container is made (one line, exit 125), and host port 0
(`-p 80`, `-P`) or a range (`-p 8000-8010:80`) becomes the port the kernel left free. The ports
taken are recorded in state.json (`ContainerState.ports`) for `strata port` and `inspect`, and
stay recorded until the rules are gone, so that whoever finds a dead monitor knows what to
remove. The sockets listen (TCP; with SO_REUSEADDR, as Go's listeners have) but never accept:
every connection to them is DNATed before it could reach them.

**Forwarding.** Table `ip strata_ports` holds three base chains per container, named after its
id (the table has no other content):

    pre-ID    nat prerouting, dstnat: DNAT of connections to a host address from outside and
              from containers (hairpin: a container to the host's address, itself included)
    out-ID    nat output, dstnat: the host's own connections, also to 127.0.0.1 (the bridge
              gets route_localnet, as netavark gives it)
    post-ID   nat postrouting, srcnat: masquerade of the DNATed connections to the container
              that come from its own subnet (hairpin: else the answer would bypass the host)
              or from 127.0.0.0/8 (which must not leave the host as it is)

And one chain for the table, `guard` (filter prerouting, raw priority): the bridge gets
route_localnet (for the host's own connections to 127.0.0.1:PORT), which would also let a
container reach the host's loopback services by sending to 127.0.0.1 through its gateway, so
what comes in by any interface but `lo` for 127.0.0.0/8 is dropped first (as kube-proxy does
since CVE-2020-8558; elsewhere such packets are martians anyway). Its rule is added when the
table is made, which the echo of the start's transaction tells (`nft -e`: a table made now
comes back with its handle), so no start pays for a listing, a re-made rule, or even an `add` of
the existing chain (an update of a base chain, ~10 ms).

A rule per host address: `fib daddr type local` (every address of the host; `-p 8080:80`) or
`ip daddr A` (`-p A:8080:80`), then `dnat ip to meta l4proto . th dport map {tcp . 8080 :
10.90.0.2 . 80, ...}`. Chains per container, rather than rules in shared chains, make removal
exact and cheap: by name, without listing the ruleset or keeping rule handles; and `add`,
`flush`, `delete` of a chain in one transaction is no error when the chain is already gone.
A start makes its chains (or empties those a dead run of it left) and removes other dead
containers' in one `nft -j -f -` call, ~5 ms; an exit removes them in one more, ~16 ms: a
transaction that deletes anything (chains, rules or set elements alike) waits for an RCU grace
period in the kernel, which is why a start never deletes its own chains first. A container
that publishes nothing costs no call at all.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Final

from unionfs.errors import UsageError

from .control import START_FAILED, StartError
from .network import nft_json, nft_table_exists
from .ports import PortMapping, exposed_ports
from .state import RUNNING, ContainerConfig, ContainerDir, StateRoot, process_alive

NFT_FAMILY: Final = "ip"
NFT_TABLE: Final = "strata_ports"
LOOPBACK: Final = "127.0.0.0/8"
GUARD_CHAIN: Final = "guard"  # drops what comes in for 127.0.0.0/8 but by lo (see _guard)
_OWN_NETWORK_MODES: Final = ("none", "host")  # modes without published ports


def wanted(cfg: ContainerConfig) -> tuple[PortMapping, ...]:
    """What the container publishes: its `-p` mappings, and with `-P` the image's exposed
    ports that no `-p` names already (docker's precedence). None on `host` or `none`."""
    if cfg.network in _OWN_NETWORK_MODES or cfg.network.startswith("container:"):
        return ()
    mappings = [PortMapping.from_text(text) for text in cfg.ports]
    if cfg.publish_all:
        named = {m.key() for m in mappings}
        mappings += [m for m in exposed_ports(cfg.exposed_ports) if m.key() not in named]
    return tuple(mappings)


@dataclass
class Reservation:
    """The host ports a running container holds: its mappings with the ports actually taken,
    and the bound sockets holding them."""

    mappings: tuple[PortMapping, ...] = ()
    sockets: list[socket.socket] = field(default_factory=list)

    def texts(self) -> tuple[str, ...]:
        return tuple(m.text() for m in self.mappings)

    def close(self) -> None:
        """Let the ports go (after their rules)."""
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def reserve(mappings: Sequence[PortMapping]) -> Reservation:
    """Bind a socket for every mapping: port 0 to a free port, a range to its first free port.
    StartError (exit 125) naming the port when one is taken or the address is not the host's;
    nothing stays bound then."""
    held = Reservation()
    try:
        taken = [_bind(m, held.sockets) for m in mappings]
    except BaseException:
        held.close()
        raise
    held.mappings = tuple(taken)
    return held


def _bind(m: PortMapping, sockets: list[socket.socket]) -> PortMapping:
    address = m.host_ip or "0.0.0.0"
    kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
    last_error: OSError | None = None
    for port in m.host_ports():
        sock = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(1)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise StartError(_bind_failure(m, address, port, exc), START_FAILED) from None
            last_error = exc
            continue
        sockets.append(sock)
        return PortMapping(m.host_ip, sock.getsockname()[1], m.container_port, m.protocol)
    assert last_error is not None
    if m.host_port_last:
        message = (
            f"-p {m.text()}: no free host port in {m.host_port}-{m.host_port_last}/{m.protocol}"
            f" on {address}"
        )
    else:
        message = _bind_failure(m, address, m.host_port, last_error)
    raise StartError(message, START_FAILED)


def _bind_failure(m: PortMapping, address: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"-p {m.text()}: host port {address}:{port}/{m.protocol} is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"-p {m.text()}: {address} is not an address of this host"
    return f"-p {m.text()}: binding {address}:{port}/{m.protocol}: {exc.strerror}"


# -- the nftables side


def _inside() -> dict[str, str]:
    return {"family": NFT_FAMILY, "table": NFT_TABLE}


def _chains(cid: str) -> tuple[tuple[str, str, int, str], ...]:
    """(name, hook, priority, type) of a container's chains."""
    return (
        (f"pre-{cid}", "prerouting", -100, "nat"),
        (f"out-{cid}", "output", -100, "nat"),
        (f"post-{cid}", "postrouting", 100, "nat"),
    )


def _chain(name: str, hook: str, prio: int, kind: str) -> dict[str, object]:
    return {**_inside(), "name": name, "type": kind, "hook": hook, "prio": prio, "policy": "accept"}


def removal(cid: str) -> list[dict[str, object]]:
    """The commands removing a container's chains, whether they exist or not."""
    commands: list[dict[str, object]] = []
    for name, hook, prio, kind in _chains(cid):
        commands += [
            {"add": {"chain": _chain(name, hook, prio, kind)}},
            {"flush": {"chain": {**_inside(), "name": name}}},
            {"delete": {"chain": {**_inside(), "name": name}}},
        ]
    return commands


def _match(left: object, op: str, right: object) -> dict[str, object]:
    return {"match": {"op": op, "left": left, "right": right}}


def addition(
    cid: str, address: str, subnet: IPv4Network, mappings: Sequence[PortMapping]
) -> list[dict[str, object]]:
    """The commands making a container's chains for `mappings` (host ports taken) to the
    container's `address` on `subnet`."""
    if not mappings:
        return []
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    by_address: dict[str, list[PortMapping]] = {}
    for m in mappings:
        by_address.setdefault(m.host_ip, []).append(m)
    dnat_rules = []
    for host_ip, group in by_address.items():
        where = (
            _match(daddr, "==", host_ip)
            if host_ip
            else _match({"fib": {"result": "type", "flags": ["daddr"]}}, "==", "local")
        )
        table = [
            [{"concat": [m.protocol, m.host_port]}, {"concat": [address, m.container_port]}]
            for m in group
        ]
        key = {
            "concat": [
                {"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}},
            ]
        }
        dnat = {"dnat": {"family": "ip", "addr": {"map": {"key": key, "data": {"set": table}}}}}
        dnat_rules.append([where, dnat])
    prefixes = [
        {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
        for net in (subnet, IPv4Network(LOOPBACK))
    ]
    masquerade = [
        _match({"ct": {"key": "status"}}, "in", "dnat"),
        _match(daddr, "==", address),
        _match(saddr, "==", {"set": prefixes}),
        {"masquerade": None},
    ]
    pre, out, post = _chains(cid)
    # made, or emptied if a dead run of the container left them: cheaper than deleting them
    # (each base chain deleted is a hook unregistered, a wait for an RCU grace period)
    commands: list[dict[str, object]] = []
    for name, hook, prio, kind in (pre, out, post):
        commands += [
            {"add": {"chain": _chain(name, hook, prio, kind)}},
            {"flush": {"chain": {**_inside(), "name": name}}},
        ]
    for name in (pre[0], out[0]):
        commands += [{"add": {"rule": {**_inside(), "chain": name, "expr": e}}} for e in dnat_rules]
    commands.append({"add": {"rule": {**_inside(), "chain": post[0], "expr": masquerade}}})
    return commands


def _stale(root: StateRoot, exclude: str) -> list[ContainerDir]:
    """This root's containers whose recorded ports may still have rules although they do not
    run (`exclude` counts as not running: it is the caller's own)."""
    found = []
    for cdir in root.containers():
        state = cdir.read_state()
        if state.ports and (
            cdir.id == exclude
            or state.status != RUNNING
            or not process_alive(state.monitor_pid, state.monitor_start)
        ):
            found.append(cdir)
    return found


def _apply(
    root: StateRoot, exclude: str, commands: list[dict[str, object]], *, own: bool = True
) -> tuple[list[str], object]:
    """One nft transaction: the stale containers' chains removed (`exclude`'s too if `own`),
    then `commands`; the stale containers' records cleared (not `exclude`'s: its monitor
    writes its own state). What was removed, and nft's echo of what `commands` made. Lock
    held."""
    stale = [c for c in _stale(root, exclude) if own or c.id != exclude]
    if not stale and not commands:
        return [], None
    table = {"family": NFT_FAMILY, "name": NFT_TABLE}
    document: list[dict[str, object]] = [{"add": {"table": table}}]
    for cdir in stale:
        document += removal(cdir.id)
    args = ["-e", "-f", "-"] if commands else ["-f", "-"]
    echo = nft_json(args, {"nftables": document + commands}, "published ports")
    for cdir in stale:
        if cdir.id != exclude:
            with contextlib.suppress(OSError):
                cdir.write_state(cdir.read_state().replace(ports=()))
    return [f"published ports of {cdir.id[:12]}" for cdir in stale], echo


def start(
    root: StateRoot,
    cfg: ContainerConfig,
    address: str,
    subnet: IPv4Network,
    bridge: str,
    veth: str,
    held: Reservation,
) -> None:
    """Forward the container's held ports to its `address` on `bridge`, where its host-side
    link is `veth` (replacing what a dead run of it left), and remove what dead containers of
    `root` left. State lock held; the container's state records `held`'s ports."""
    commands = addition(cfg.id, address, subnet, held.mappings)
    if commands:
        # the container reaching itself through a host address: with br_netfilter the DNATed
        # frame is bridged, back out of the port it came in by, which takes hairpin mode
        _write(f"/sys/class/net/{veth}/brport/hairpin_mode")
    _, echo = _apply(root, cfg.id, commands, own=False)  # its own chains are remade in place
    if commands:
        if _table_made(echo):
            nft_json(["-f", "-"], {"nftables": _guard_rule()}, "published ports' guard")
        # the host's own connections to 127.0.0.1 leave through the bridge (then masqueraded);
        # only once the guard is there
        _write(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")


def _table_made(echo: object) -> bool:
    """Whether `nft -e`'s echo says table ip strata_ports was made by that transaction (an
    existing table comes back without a handle); True when in doubt (a second guard rule is
    harmless, a missing one is not)."""
    entries = echo.get("nftables") if isinstance(echo, dict) else None
    if not isinstance(entries, list):
        return True
    for entry in entries:
        added = entry.get("add") if isinstance(entry, dict) else None
        table = added.get("table") if isinstance(added, dict) else None
        if isinstance(table, dict) and table.get("name") == NFT_TABLE:
            return "handle" in table
    return True


def _guard_chain() -> dict[str, object]:
    return {
        **_inside(),
        "name": GUARD_CHAIN,
        "type": "filter",
        "hook": "prerouting",
        "prio": -300,
        "policy": "accept",
    }


def _guard_rule() -> list[dict[str, object]]:
    """The guard's one rule: what comes in by any interface but lo for 127.0.0.0/8 is
    dropped before conntrack and NAT see it (see the module's docstring)."""
    rule = [
        _match({"meta": {"key": "iifname"}}, "!=", "lo"),
        _match(
            {"payload": {"protocol": "ip", "field": "daddr"}},
            "==",
            {"prefix": {"addr": "127.0.0.0", "len": 8}},
        ),
        {"drop": None},
    ]
    return [
        {"add": {"chain": _guard_chain()}},
        {"add": {"rule": {**_inside(), "chain": GUARD_CHAIN, "expr": rule}}},
    ]


def _write(path: str) -> None:
    """Switch a kernel setting of the bridge or its port on (StartError if they are gone)."""
    try:
        with open(path, "w") as f:
            f.write("1\n")
    except OSError as exc:
        raise StartError(f"published ports: {path}: {exc.strerror}", START_FAILED) from None


def tidy(root: StateRoot, *, exclude: str = "") -> list[str]:
    """Remove the rules of this root's containers that do not run (`exclude` counts as not
    running); no nft call if there are none. What was removed, for `network prune`. Root, with
    the state lock held."""
    return _apply(root, exclude, [])[0]


def remove_empty_table() -> list[str]:
    """`network prune`: delete table `ip strata_ports` (its guard with it) if no container's
    chain is left in it (another state root's containers may have theirs there)."""
    if not nft_table_exists(NFT_FAMILY, NFT_TABLE):
        return []
    table = {"family": NFT_FAMILY, "name": NFT_TABLE}
    listed = nft_json(["list", "table", NFT_FAMILY, NFT_TABLE], None, "published ports")
    entries = listed.get("nftables", []) if isinstance(listed, dict) else []
    if any(
        isinstance(e, dict) and "chain" in e and e["chain"].get("name") != GUARD_CHAIN
        for e in entries
    ):
        return []
    nft_json(["-f", "-"], {"nftables": [{"delete": {"table": table}}]}, "published ports")
    return [f"nft table {NFT_FAMILY} {NFT_TABLE}"]


def warn(message: str) -> None:
    print(f"strata: warning: {message}", file=sys.stderr, flush=True)


# -- what `port` and `inspect` show


def published(cdir: ContainerDir) -> tuple[PortMapping, ...]:
    """The ports a running container holds (none when it does not run)."""
    state = cdir.effective_state()
    if state.status != RUNNING:
        return ()
    return tuple(PortMapping.from_text(text) for text in state.ports)


def _order(m: PortMapping) -> tuple[int, str, str, int]:
    return (m.container_port, m.protocol, m.host_ip, m.host_port)


def _host(m: PortMapping) -> str:
    return f"{m.host_ip or '0.0.0.0'}:{m.host_port}"


def port_lines(cdir: ContainerDir, private: str | None = None) -> list[str]:
    """`strata port` as `docker port` prints it: `80/tcp -> 0.0.0.0:8080` per port, or for one
    PRIVATE_PORT[/PROTO] only its host addresses (UsageError, exit 1, if it is not published)."""
    mappings = sorted(published(cdir), key=_order)
    if private is None:
        return [f"{m.key()} -> {_host(m)}" for m in mappings]
    port, _, protocol = private.partition("/")
    protocol = (protocol or "tcp").lower()
    if not port.isdigit() or not 1 <= int(port) <= 65535 or protocol not in ("tcp", "udp"):
        raise UsageError(f"port {private!r}: expected PORT[/tcp|udp]", 1)
    key = f"{int(port)}/{protocol}"
    lines = [_host(m) for m in mappings if m.key() == key]
    if not lines:
        raise UsageError(f"no public port {key!r} published for {cdir.name}", 1)
    return lines


def ps_ports(cdir: ContainerDir) -> str:
    """The PORTS column of `ps`, as docker's: `0.0.0.0:8080->80/tcp, 127.0.0.1:40001->80/tcp`."""
    return ", ".join(f"{_host(m)}->{m.key()}" for m in sorted(published(cdir), key=_order))


def _binding(host_ip: str, host_port: str) -> dict[str, str]:
    return {"HostIp": host_ip, "HostPort": host_port}


def inspect_fields(cdir: ContainerDir) -> dict[str, dict[str, object]]:
    """docker's port fields of `inspect`: Config.ExposedPorts, HostConfig.PortBindings and
    NetworkSettings.Ports (the host ports taken, while it runs; null for an exposed port that is
    not published)."""
    cfg = cdir.config
    requested = [PortMapping.from_text(text) for text in cfg.ports]
    exposed: dict[str, dict[str, object]] = {m.key(): {} for m in exposed_ports(cfg.exposed_ports)}
    exposed |= {m.key(): {} for m in requested}
    bindings: dict[str, list[dict[str, str]]] = {}
    for m in requested:
        host = str(m.host_port) if m.host_port else ""
        host += f"-{m.host_port_last}" if m.host_port_last else ""
        bindings.setdefault(m.key(), []).append(_binding(m.host_ip, host))
    ports: dict[str, object] = {}
    state = cdir.effective_state()
    if state.status == RUNNING:
        ports = dict.fromkeys(exposed)
        for m in sorted(published(cdir), key=_order):
            entry = ports.get(m.key())
            listed = entry if isinstance(entry, list) else []
            listed.append(_binding(m.host_ip or "0.0.0.0", str(m.host_port)))
            ports[m.key()] = listed
    return {
        "ExposedPorts": dict(sorted(exposed.items())),
        "PortBindings": dict(sorted(bindings.items())),
        "Ports": dict(sorted(ports.items())),
    }


def check_mode(mappings: Iterable[PortMapping], publish_all: bool, mode: str) -> None:
    """At create: published ports need a network namespace of the container's own that the
    host reaches. `host`: ignored with a warning, as docker does; `none` and `container:`:
    refused; an IPv6 host address: refused (the bridge is IPv4)."""
    mappings = tuple(mappings)
    if not mappings and not publish_all:
        return
    if mode == "host":
        warn("published ports are discarded when using host network mode")
        return
    if mode == "none" or mode.startswith("container:"):
        raise UsageError(f"-p/-P: no ports can be published with --network {mode}", 125)
    for m in mappings:
        if ":" in m.host_ip:
            raise UsageError(
                f"-p {m.text()}: IPv6 host addresses are not supported (the bridge is IPv4)", 125
            )
