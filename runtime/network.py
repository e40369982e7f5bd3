"""Container networks: `none` (a new network namespace with only `lo`, up), `host` (no new
namespace) and `bridge` (a veth pair from the `strata0` bridge into a new namespace).

`lo` is brought up with one ioctl from inside the namespace, so `none` needs no tool from the image
or the host. `bridge` uses iproute2's `ip` from the host: the host side (bridge, veth pair) from
the runtime, the container side (address, route) from the container's PID 1 before pivot_root,
while the host's /usr/sbin/ip is still visible to it. Bridge networking needs root on the host.

Beyond the host, the bridge's traffic is masqueraded by nftables table `ip strata` (made through
`nft -j`, JSON both ways, never nft's text): a `postrouting` nat chain masquerading the subnet out
of any other interface, and a `forward` filter chain accepting the bridge's traffic out and its
replies back in. IPv4 forwarding is switched on only if it was off, and that is written down in
the state root (`ip_forward`) so that it is switched off again when the bridge goes. The bridge,
its table and the forwarding go with the last bridge container (`tidy`, with the state lock
held), unless a port is left on the bridge (a container of another state root); what a monitor
killed with SIGKILL left is collected by the next start, `rm` or `strata network prune`.

The default subnet, 10.90.0.0/16, stays clear of podman's (10.88.0.0/16, then 10.89.x.0/24) and
Docker's (172.17.0.0/16); `--subnet` picks another when the bridge is first made.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .state import RUNNING, StateRoot

BRIDGE: Final = "strata0"
DEFAULT_SUBNET: Final = "10.90.0.0/16"

NFT_FAMILY: Final = "ip"
NFT_TABLE: Final = "strata"
IP_FORWARD: Final = Path("/proc/sys/net/ipv4/ip_forward")
FORWARD_MARK: Final = "ip_forward"  # in the state root: strata switched forwarding on

_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_IFF_UP: Final = 0x1
_IFREQ: Final = "16sH22x"  # struct ifreq: name, then ifr_flags in the 24-byte union


def loopback_up() -> None:
    """Bring `lo` up in this process's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, req)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise UsageError(f"--subnet {text}: {exc}", 125) from None
    if net.prefixlen > 30:
        raise UsageError(f"--subnet {text}: too small for a gateway and a container", 125)
    return net


def gateway(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + 1


def allocate_address(net: ipaddress.IPv4Network, used: Iterable[str]) -> str:
    """The lowest address in `net` after the gateway that no running container has."""
    taken = set(used)
    for host in net.hosts():
        if host == gateway(net):
            continue
        if str(host) not in taken:
            return str(host)
    raise UsageError(f"no free address left in {net}", 125)


def _ip() -> str:
    path = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
    if path is None:
        raise UsageError("--network bridge needs iproute2's ip (apt install iproute2)", 125)
    return path


def _ip_batch(commands: Sequence[str], what: str) -> None:
    done = subprocess.run(
        [_ip(), "-batch", "-"],
        input="".join(f"{c}\n" for c in commands),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        detail = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise OSError(0, f"{what}: ip: {detail}")


def _bridge_networks() -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses on the bridge, from `ip -j` (JSON, not ip's text)."""
    done = subprocess.run(
        [_ip(), "-j", "-4", "addr", "show", "dev", BRIDGE],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        links = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
    except ValueError:
        links = []
    found: list[ipaddress.IPv4Interface] = []
    for link in links if isinstance(links, list) else []:
        infos = link.get("addr_info", []) if isinstance(link, dict) else []
        found.extend(
            ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
            for info in infos
            if isinstance(info, dict) and info.get("family") == "inet"
        )
    return found


def veth_name(container_id: str) -> str:
    return f"vs{container_id[:12]}"  # interface names have at most 15 characters


def connect_host_side(net: ipaddress.IPv4Network, container_id: str, netns_pid: int) -> None:
    """Make sure the bridge exists with the gateway address, then add a veth pair whose peer is
    `eth0` in the network namespace of `netns_pid`. Call with the state lock held (the bridge is
    shared)."""
    if os.geteuid() != 0:
        raise UsageError("--network bridge needs root (rootless: use none or host)", 125)
    commands = []
    gw = ipaddress.IPv4Interface(f"{gateway(net)}/{net.prefixlen}")
    if not os.path.exists(f"/sys/class/net/{BRIDGE}"):
        commands += [f"link add {BRIDGE} type bridge", f"addr add {gw} dev {BRIDGE}"]
    else:
        existing = _bridge_networks()
        if existing and all(i.network != net for i in existing):
            have = ", ".join(str(i.network) for i in existing)
            raise UsageError(f"bridge {BRIDGE} already serves {have}, not {net}", 125)
        if not existing:
            commands.append(f"addr add {gw} dev {BRIDGE}")
    veth = veth_name(container_id)
    commands += [
        f"link set {BRIDGE} up",
        f"link add {veth} type veth peer name eth0 netns {netns_pid}",
        f"link set {veth} master {BRIDGE} up",
    ]
    _ip_batch(commands, f"bridge {BRIDGE}")


def _nft() -> str:
    path = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if path is None:
        raise UsageError("--network bridge needs nftables' nft (apt install nftables)", 125)
    return path


def _nft_json(args: Sequence[str], document: object | None, what: str) -> object:
    """Run `nft -j ARGS` (feeding `document` as JSON on stdin with `-f -`); its JSON output."""
    done = subprocess.run(
        [_nft(), "-j", *args],
        input=None if document is None else json.dumps(document),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        detail = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise OSError(0, f"{what}: nft: {detail}")
    return json.loads(done.stdout) if done.stdout.strip() else None


def nat_document(net: ipaddress.IPv4Network) -> dict[str, object]:
    """The nft JSON transaction that (re)makes table `ip strata` for `net`: adding then deleting
    then adding the table makes it idempotent and atomic (a stale table is replaced whole)."""
    table = {"family": NFT_FAMILY, "name": NFT_TABLE}
    inside = {"family": NFT_FAMILY, "table": NFT_TABLE}

    def chain(name: str, kind: str, hook: str, prio: int) -> dict[str, object]:
        return {
            "add": {
                "chain": {**inside, "name": name, "type": kind, "hook": hook, "prio": prio}
                | {"policy": "accept"}
            }
        }

    def rule(name: str, *expr: object) -> dict[str, object]:
        return {"add": {"rule": {**inside, "chain": name, "expr": list(expr)}}}

    def match(key: object, op: str, right: object) -> dict[str, object]:
        return {"match": {"op": op, "left": key, "right": right}}

    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    prefix = {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    iif, oif = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
    return {
        "nftables": [
            {"add": {"table": table}},
            {"delete": {"table": table}},
            {"add": {"table": table}},
            chain("postrouting", "nat", "postrouting", 100),  # srcnat
            chain("forward", "filter", "forward", 0),
            rule(
                "postrouting",
                match(saddr, "==", prefix),
                match(oif, "!=", BRIDGE),
                {"masquerade": None},
            ),
            rule("forward", match(iif, "==", BRIDGE), match(saddr, "==", prefix), {"accept": None}),
            rule(
                "forward",
                match(oif, "==", BRIDGE),
                match(daddr, "==", prefix),
                match({"ct": {"key": "state"}}, "in", ["established", "related"]),
                {"accept": None},
            ),
        ]
    }


def nat_table_exists() -> bool:
    """Whether table `ip strata` exists (from `nft -j list tables`)."""
    if shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
        return False
    listed = _nft_json(["list", "tables"], None, "nft tables")
    entries = listed.get("nftables", []) if isinstance(listed, dict) else []
    return any(
        isinstance(e, dict)
        and isinstance(e.get("table"), dict)
        and e["table"].get("family") == NFT_FAMILY
        and e["table"].get("name") == NFT_TABLE
        for e in entries
    )


def add_nat(net: ipaddress.IPv4Network) -> None:
    """Make (or remake) table `ip strata` masquerading `net`."""
    _nft_json(["-f", "-"], nat_document(net), f"nat for {net}")


def remove_nat() -> None:
    """Delete table `ip strata` if it exists."""
    if nat_table_exists():
        table = {"family": NFT_FAMILY, "name": NFT_TABLE}
        _nft_json(["-f", "-"], {"nftables": [{"delete": {"table": table}}]}, "nat removal")


def enable_forwarding(state_dir: Path) -> None:
    """Switch IPv4 forwarding on if it is off, noting in `state_dir` that strata did."""
    if IP_FORWARD.read_text().strip() == "1":
        return
    (state_dir / FORWARD_MARK).write_text("strata switched net.ipv4.ip_forward on\n")
    IP_FORWARD.write_text("1\n")


def restore_forwarding(state_dir: Path) -> None:
    """Switch IPv4 forwarding off again if strata switched it on."""
    mark = state_dir / FORWARD_MARK
    if mark.exists():
        IP_FORWARD.write_text("0\n")
        mark.unlink()


def strata_veths() -> list[str]:
    """The host ends of strata's veth pairs (`vs` + 12 hex digits), from `ip -j link`."""
    done = subprocess.run(
        [_ip(), "-j", "link", "show", "type", "veth"],
        capture_output=True,
        text=True,
        check=False,
    )
    links = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
    found = []
    for link in links if isinstance(links, list) else []:
        name = str(link.get("ifname", "")) if isinstance(link, dict) else ""
        rest = name[2:]
        if name.startswith("vs") and len(rest) == 12 and all(c in "0123456789abcdef" for c in rest):
            found.append(name)
    return sorted(found)


def _delete_link(name: str) -> None:
    """`ip link del NAME`; a link that vanished meanwhile (its namespace died) is fine."""
    try:
        _ip_batch([f"link del {name}"], f"removing {name}")
    except OSError:
        if os.path.exists(f"/sys/class/net/{name}"):
            raise


def bridge_containers(root: StateRoot, *, exclude: str = "") -> list[str]:
    """Ids of the running containers on the bridge network, but `exclude`."""
    return [
        c.id
        for c in root.containers()
        if c.id != exclude
        and c.config.network == "bridge"
        and c.effective_state().status == RUNNING
    ]


def _bridge_ports() -> list[str]:
    try:
        return sorted(os.listdir(f"/sys/class/net/{BRIDGE}/brif"))
    except FileNotFoundError:
        return []


def tidy(root: StateRoot, *, exclude: str = "") -> list[str]:
    """Remove the veths of this state root's containers that do not run (`exclude` counts as
    not running: it is the caller's, on its way out); then, if no container of this root runs
    on the bridge and no port is left on it (another state root's containers may use it), the
    bridge, its nft table and the forwarding strata switched on. What was removed, for
    `network prune`. Call as root with the state lock held."""
    running = set(bridge_containers(root, exclude=exclude))
    dead = {veth_name(c.id) for c in root.containers() if c.id not in running}
    removed = []
    for veth in strata_veths():
        if veth in dead:
            _delete_link(veth)
            removed.append(veth)
    if running or _bridge_ports():
        return removed
    if os.path.exists(f"/sys/class/net/{BRIDGE}"):
        _delete_link(BRIDGE)
        removed.append(BRIDGE)
    if nat_table_exists():
        remove_nat()
        removed.append(f"nft table {NFT_FAMILY} {NFT_TABLE}")
    if (root.path / FORWARD_MARK).exists():
        restore_forwarding(root.path)
        removed.append("net.ipv4.ip_forward=1")
    return removed


def connect_container_side(address: str, net: ipaddress.IPv4Network) -> None:
    """In the container's network namespace: address and default route on eth0."""
    _ip_batch(
        [
            f"addr add {address}/{net.prefixlen} dev eth0",
            "link set eth0 up",
            f"route add default via {gateway(net)}",
        ],
        "container network",
    )


HOST_GATEWAY: Final = "host-gateway"  # --add-host NAME:host-gateway, as docker's


def parse_dns(values: Sequence[str]) -> tuple[str, ...]:
    """`--dns IP`s, each an IPv4 or IPv6 address."""
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise UsageError(f"--dns {value!r}: not an IP address", 125) from None
    return tuple(values)


def parse_dns_search(values: Sequence[str]) -> tuple[str, ...]:
    """`--dns-search DOMAIN`s; `.` alone means no search domains (docker's spelling)."""
    for value in values:
        if value != "." and (
            not value or len(value) > 253 or not all(c.isalnum() or c in "-._" for c in value)
        ):
            raise UsageError(f"--dns-search {value!r}: not a domain name", 125)
    return tuple(values)


def parse_dns_options(values: Sequence[str]) -> tuple[str, ...]:
    """`--dns-option OPT`s, as resolv.conf's `options` takes them (`ndots:2`, `edns0`)."""
    for value in values:
        if not value or any(c.isspace() for c in value):
            raise UsageError(f"--dns-option {value!r}: one word, such as ndots:2", 125)
    return tuple(values)


def parse_add_hosts(values: Sequence[str], mode: str) -> tuple[str, ...]:
    """`--add-host NAME:IP` (or `NAME=IP`; IP may be `host-gateway`), checked; kept as given
    (`host-gateway` is resolved when the container starts, once its network is known)."""
    for value in values:
        name, ip = split_add_host(value)
        if not name or len(name) > 253 or not all(c.isalnum() or c in "-._" for c in name):
            raise UsageError(f"--add-host {value!r}: expected NAME:IP", 125)
        if ip == HOST_GATEWAY:
            if mode == "none":
                raise UsageError(
                    f"--add-host {value!r}: host-gateway needs --network bridge or host", 125
                )
            continue
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"--add-host {value!r}: {ip!r} is not an IP address", 125) from None
    return tuple(values)


def split_add_host(value: str) -> tuple[str, str]:
    """NAME and IP of `NAME:IP` or `NAME=IP` (the IP may hold colons: IPv6)."""
    for sep in ("=", ":"):
        name, found, ip = value.partition(sep)
        if found:
            return name, ip.removeprefix("[").removesuffix("]")
    return value, ""


def host_gateway(mode: str, net: ipaddress.IPv4Network | None) -> str:
    """The host as the container reaches it: the bridge's gateway, or loopback on the host's
    own network."""
    if mode == "bridge" and net is not None:
        return str(gateway(net))
    return "127.0.0.1"


def hosts_file(
    hostname: str,
    address: str | None,
    *,
    name: str = "",
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    """/etc/hosts: localhost, the container's own address under its hostname (and its name, as
    podman adds it), then the `--add-host` entries (NAME, IP) in order."""
    own = hostname if not name or name == hostname else f"{hostname} {name}"
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{address or '127.0.1.1'}\t{own}",
    ]
    lines += [f"{ip}\t{host}" for host, ip in extra]
    return "\n".join(lines) + "\n"


HOST_RESOLV_CONF: Final = "/etc/resolv.conf"


def host_resolv_conf() -> str:
    """The host's resolv.conf: the one place strata reads it (tests point strata at another by
    bind-mounting it over /etc/resolv.conf in a mount namespace of their own)."""
    try:
        with open(HOST_RESOLV_CONF) as f:
            return f.read()
    except OSError:
        return ""


def _nameservers(text: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.ip_address(fields[1]))
    return found


def _reachable_from_bridge(server: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a bridge container reaches `server` through NAT: an IPv4 address off the host
    (the bridge has no IPv6; the host's loopback is the container's own)."""
    return server.version == 4 and not server.is_loopback


def bridge_dns_upstreams(host: str) -> tuple[str, ...]:
    """The servers strata's DNS forwarder on the gateway relays to when a bridge container can
    reach none of the host's (`host`: the host's resolv.conf): its loopback stubs (127.0.0.53
    and the like) and IPv6 servers. Empty when it names a server reachable through NAT, or
    none."""
    servers = _nameservers(host)
    if any(_reachable_from_bridge(s) for s in servers):
        return ()
    return tuple(str(s) for s in servers)


def resolv_conf(
    mode: str,
    *,
    dns: Sequence[str] = (),
    search: Sequence[str] = (),
    options: Sequence[str] = (),
    host: str | None = None,
    forwarder: str = "",
) -> str:
    """The container's resolv.conf, from the host's (`host`, read when None). Without `--dns`:
    the host's servers for host networking; for bridge those it reaches through NAT, or, when
    there are none, `forwarder` (the gateway, where strata's DNS forwarder relays to the host's
    loopback servers); nothing for none. `--dns` replaces the servers, `--dns-search` the search
    line (`.`: none), `--dns-option` the options line, as in docker."""
    if mode == "none" and not (dns or search or options):
        return ""
    text = ""
    if mode != "none" and not (dns and search and options):
        text = host_resolv_conf() if host is None else host
    kept = []
    for line in text.splitlines():
        fields = line.split()
        key = fields[0] if fields else ""
        if key == "nameserver":
            if dns:
                continue
            if mode != "host":
                try:
                    if len(fields) < 2 or not _reachable_from_bridge(
                        ipaddress.ip_address(fields[1])
                    ):
                        continue
                except ValueError:
                    continue
        elif (key in ("search", "domain") and search) or (key == "options" and options):
            continue
        kept.append(line)
    if not dns and forwarder and mode != "host":
        dns = [forwarder]
    kept += [f"nameserver {server}" for server in dns]
    if search and list(search) != ["."]:
        kept.append("search " + " ".join(d for d in search if d != "."))
    if options:
        kept.append("options " + " ".join(options))
    return "\n".join(kept) + ("\n" if kept else "")
