"""Container networks: `none` (a new network namespace with only `lo`, up), `host` (no new
namespace) and `bridge` (a veth pair from the `strata0` bridge into a new namespace).

`lo` is brought up with one ioctl from inside the namespace, so `none` needs no tool from the image
or the host. `bridge` uses iproute2's `ip` from the host, run by the monitor: the host side
(bridge, veth pair), then the container side (address, route) through `nsenter --net`, so that
no process of the runtime takes a pid in the container. Bridge networking needs root on the
host. (pyroute2 would spare the two `ip` processes, but importing it costs ~260 ms, against ~5 ms
per `ip -batch`.)

Beyond the host, the bridges' traffic is masqueraded by nftables table `ip strata` (made through
`nft -j`, JSON both ways, never nft's text), rebuilt whole from the strata bridges up on the host
whenever one comes or goes: a `postrouting` nat chain masquerading each subnet out of any other
interface, and a `forward` filter chain accepting each bridge's traffic out and its replies back
in, and dropping traffic between two strata bridges (networks are isolated); an `input` chain
drops what a bridge sends to another's subnet (the host's gateway address there, where a user
network's DNS server answers). IPv4 forwarding is switched on only if it was off, and that is written down in /run/strata (`ip_forward`) so that
it is switched off again when the last bridge goes.

A bridge is the network's, not a container's: like docker0 it stays when its last container
exits (removing a bridge costs the kernel ~40 ms, which would land on every `run --rm`), and
`strata network prune` removes the bridges no container uses, the table and the forwarding. What
is a container's goes with it: its veth (with its network namespace), its address lease. Leases
are host-wide (/run/strata/leases/BRIDGE/IP: the monitor's pid and start time), so that two
state roots sharing `strata0` never hand out one address twice, and a lease whose monitor died
(SIGKILL) is free again; the host lock (/run/strata/lock) is taken after a state root's lock.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .state import RUNNING, StateRoot, process_start_time, write_json

BRIDGE: Final = "strata0"
USER_BRIDGE_PREFIX: Final = "stbr"  # + 10 hex digits: a user network's bridge
RUN_DIR: Final = Path("/run/strata")  # host-wide records (per boot): leases, forwarding, lock
DEFAULT_SUBNET: Final = "10.90.0.0/16"

NFT_FAMILY: Final = "ip"
NFT_TABLE: Final = "strata"
IP_FORWARD: Final = Path("/proc/sys/net/ipv4/ip_forward")
FORWARD_MARK: Final = "ip_forward"  # in RUN_DIR: strata switched forwarding on

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
        raise UsageError(
            f"--subnet {text}: not an IPv4 CIDR such as 10.91.0.0/24 ({exc})", 125
        ) from None
    if net.prefixlen > 30:
        raise UsageError(f"--subnet {text}: too small for a gateway and a container", 125)
    return net


def gateway(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + 1


def allocate_address(
    net: ipaddress.IPv4Network, used: Iterable[str], gw: ipaddress.IPv4Address | None = None
) -> str:
    """The lowest address in `net` that is not the gateway (`gw`, a user network's `--gateway`,
    else the first address) and that no running container has."""
    taken = set(used)
    for host in net.hosts():
        if host == (gw or gateway(net)):
            continue
        if str(host) not in taken:
            return str(host)
    raise UsageError(f"no free address left in {net}", 125)


def _ip() -> str:
    path = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
    if path is None:
        raise UsageError("--network bridge needs iproute2's ip (apt install iproute2)", 125)
    return path


def _ip_batch(commands: Sequence[str], what: str, *, netns_pid: int = 0) -> None:
    """`ip -batch -` (in the network namespace of `netns_pid`, if given)."""
    enter = ["nsenter", f"--net=/proc/{netns_pid}/ns/net"] if netns_pid else []
    done = subprocess.run(
        [*enter, _ip(), "-batch", "-"],
        input="".join(f"{c}\n" for c in commands),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        detail = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise OSError(0, f"{what}: ip: {detail}")


def veth_name(container_id: str) -> str:
    return f"vs{container_id[:12]}"  # interface names have at most 15 characters


def is_strata_bridge(name: str) -> bool:
    """strata's bridges: the default network's `strata0`, and user networks' `stbr` + 10 hex."""
    rest = name[4:]
    return name == BRIDGE or (
        name.startswith(USER_BRIDGE_PREFIX)
        and len(rest) == 10
        and all(c in "0123456789abcdef" for c in rest)
    )


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """flock(2) on /run/strata/lock: bridges, leases, the nft table and the forwarding are the
    host's, shared by every state root. Taken after a state root's lock, never before."""
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(RUN_DIR / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- addresses: one lease file per address in use, host-wide (/run/strata/leases/BRIDGE/IP)


def _leases_dir(bridge: str) -> Path:
    return RUN_DIR / "leases" / bridge


def _lease_alive(path: Path) -> bool:
    """Whether a lease's holder (the monitor that took it: pid and start time) still runs."""
    try:
        holder = json.loads(path.read_text())
        pid, start = int(holder["pid"]), int(holder["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return pid > 0 and process_start_time(pid) == start


def lease_address(
    bridge: str,
    net: ipaddress.IPv4Network,
    container_id: str,
    gw: ipaddress.IPv4Address | None = None,
) -> str:
    """A free address of `net` for this monitor's container, recorded host-wide so that no two
    live containers, of any state root, get the same one; a lease whose monitor is gone (also
    after SIGKILL) is free again. Call with the host lock held."""
    leases = _leases_dir(bridge)
    leases.mkdir(mode=0o700, parents=True, exist_ok=True)
    address = allocate_address(net, _live_leases(leases), gw)
    me = os.getpid()
    holder = {"container": container_id, "pid": me, "start": process_start_time(me) or 0}
    write_json(leases / address, holder)  # its temporary name starts with '.': never a lease
    return address


def release_address(bridge: str, address: str, container_id: str) -> None:
    """Drop this container's lease on `address` (someone else's is left alone)."""
    path = _leases_dir(bridge) / address
    try:
        if json.loads(path.read_text()).get("container") == container_id:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _live_leases(leases: Path) -> set[str]:
    """The addresses leased in directory `leases` whose monitor still runs; the leases of
    monitors that are gone (what SIGKILL left) are removed on the way."""
    live = set()
    for name in os.listdir(leases):
        if name.startswith("."):
            continue
        if _lease_alive(leases / name):
            live.add(name)
        else:
            with contextlib.suppress(FileNotFoundError):
                (leases / name).unlink()
    return live


def _stale_leases() -> None:
    """Remove every lease whose monitor is gone, of every bridge."""
    for leases in (RUN_DIR / "leases").glob("*"):
        _live_leases(leases)


# -- bridges


def strata_bridges(only: str = "") -> dict[str, list[ipaddress.IPv4Interface]]:
    """strata's bridges on the host (or only bridge `only`) and their IPv4 addresses (`ip -j
    -4 addr`; user networks pick free subnets from them)."""
    args = ["dev", only] if only else ["type", "bridge"]
    if only and not os.path.exists(f"/sys/class/net/{only}"):
        return {}
    done = subprocess.run(
        [_ip(), "-j", "-4", "addr", "show", *args], capture_output=True, text=True, check=False
    )
    try:
        links = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
    except ValueError:
        links = []
    found: dict[str, list[ipaddress.IPv4Interface]] = {}
    for link in links if isinstance(links, list) else []:
        name = str(link.get("ifname", "")) if isinstance(link, dict) else ""
        if not is_strata_bridge(name):
            continue
        found[name] = [
            ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
            for info in link.get("addr_info", [])
            if isinstance(info, dict) and info.get("family") == "inet"
        ]
    return found


def ensure_bridge(
    net: ipaddress.IPv4Network,
    bridge: str = BRIDGE,
    gw_address: ipaddress.IPv4Address | None = None,
) -> None:
    """Make sure `bridge` exists, up, with the gateway address of `net`, that table `ip strata`
    masquerades it, and that IPv4 forwarding is on. The bridge stays when its containers are
    gone (as docker0 does: the next start is cheaper by its 40 ms teardown); `strata network
    prune` removes it. Call with the host lock held."""
    if os.geteuid() != 0:
        raise UsageError("--network bridge needs root (rootless: use none or host)", 125)
    gw = ipaddress.IPv4Interface(f"{gw_address or gateway(net)}/{net.prefixlen}")
    made = False
    if not os.path.exists(f"/sys/class/net/{bridge}"):
        _ip_batch(
            [
                f"link add {bridge} type bridge",
                f"addr add {gw} dev {bridge}",
                f"link set {bridge} up",
            ],
            f"bridge {bridge}",
        )
        made = True
    else:
        existing = strata_bridges(bridge).get(bridge, [])
        if existing and all(i.network != net for i in existing):
            have = ", ".join(str(i.network) for i in existing)
            raise UsageError(f"bridge {bridge} already serves {have}, not {net}", 125)
        if not existing:
            _ip_batch([f"addr add {gw} dev {bridge}", f"link set {bridge} up"], f"bridge {bridge}")
            made = True
    if made or not nat_table_exists():
        update_nat()
    enable_forwarding()


def connect_host_side(container_id: str, netns_pid: int, bridge: str = BRIDGE) -> None:
    """Add a veth pair whose peer is `eth0` in the network namespace of `netns_pid`, its host
    end on `bridge` (made by `ensure_bridge`)."""
    veth = veth_name(container_id)
    _ip_batch(
        [
            f"link add {veth} type veth peer name eth0 netns {netns_pid}",
            f"link set {veth} master {bridge} up",
        ],
        f"bridge {bridge}",
    )


def _nft() -> str:
    path = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if path is None:
        raise UsageError("--network bridge needs nftables' nft (apt install nftables)", 125)
    return path


def nft_json(args: Sequence[str], document: object | None, what: str) -> object:
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


def nat_document(networks: Mapping[str, ipaddress.IPv4Network]) -> dict[str, object]:
    """The nft JSON transaction that (re)makes table `ip strata` for `networks` (bridge ->
    subnet): adding then deleting then adding the table makes it idempotent and atomic (a stale
    table is replaced whole). Per bridge: its subnet masqueraded out of any other interface,
    its traffic forwarded out and the replies back in; traffic between two strata bridges is
    dropped (networks are isolated from each other, as docker's), also traffic from one bridge
    to the host's address on another (its gateway, where a user network's DNS server runs)."""
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
    iif, oif = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
    commands: list[dict[str, object]] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        chain("postrouting", "nat", "postrouting", 100),  # srcnat
        chain("forward", "filter", "forward", 0),
        chain("input", "filter", "input", 0),
    ]
    commands.extend(
        rule("forward", match(iif, "==", a), match(oif, "==", b), {"drop": None})
        for a in sorted(networks)
        for b in sorted(networks)
        if a != b
    )
    # user networks: a container reaches no other network's gateway either (where that
    # network's DNS server answers its names)
    commands.extend(
        rule(
            "input",
            match(iif, "==", a),
            match(
                daddr,
                "==",
                {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}},
            ),
            {"drop": None},
        )
        for a in sorted(networks)
        for b, net in sorted(networks.items())
        if a != b
    )
    for bridge, net in sorted(networks.items()):
        prefix = {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
        commands += [
            rule(
                "postrouting",
                match(saddr, "==", prefix),
                match(oif, "!=", bridge),
                {"masquerade": None},
            ),
            rule("forward", match(iif, "==", bridge), match(saddr, "==", prefix), {"accept": None}),
            rule(
                "forward",
                match(oif, "==", bridge),
                match(daddr, "==", prefix),
                match({"ct": {"key": "state"}}, "in", ["established", "related"]),
                {"accept": None},
            ),
        ]
    return {"nftables": commands}


def nft_table_exists(family: str, name: str) -> bool:
    """Whether nft table FAMILY NAME exists (from `nft -j list tables`); False without nft,
    with which nothing can have been made."""
    if shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
        return False
    listed = nft_json(["list", "tables"], None, "nft tables")
    entries = listed.get("nftables", []) if isinstance(listed, dict) else []
    return any(
        isinstance(e, dict)
        and isinstance(e.get("table"), dict)
        and e["table"].get("family") == family
        and e["table"].get("name") == name
        for e in entries
    )


def nat_table_exists() -> bool:
    """Whether table `ip strata` exists."""
    return nft_table_exists(NFT_FAMILY, NFT_TABLE)


def update_nat() -> bool:
    """(Re)make table `ip strata` for every strata bridge up on the host, or delete it when
    there is none; whether one is left. Call with the host lock held."""
    networks = {name: addrs[0].network for name, addrs in strata_bridges().items() if addrs}
    if networks:
        nft_json(["-f", "-"], nat_document(networks), "nat for strata's bridges")
    else:
        remove_nat()
    return bool(networks)


def _after_bridges_went(had_table: bool) -> list[str]:
    """Once bridges were removed: table `ip strata` remade for those left, and with the last
    one the table deleted and the forwarding strata switched on switched off. What went
    (`had_table`: whether the table was there before). Call with the host lock held."""
    if update_nat():
        return []
    removed = [f"nft table {NFT_FAMILY} {NFT_TABLE}"] if had_table else []
    if (RUN_DIR / FORWARD_MARK).exists():
        restore_forwarding()
        removed.append("net.ipv4.ip_forward=1")
    return removed


def remove_nat() -> None:
    """Delete table `ip strata` if it exists."""
    if nat_table_exists():
        table = {"family": NFT_FAMILY, "name": NFT_TABLE}
        nft_json(["-f", "-"], {"nftables": [{"delete": {"table": table}}]}, "nat removal")


def enable_forwarding() -> None:
    """Switch IPv4 forwarding on if it is off, noting in /run/strata that strata did (host-wide:
    the forwarding is the host's, whichever state root's container asked for it)."""
    if IP_FORWARD.read_text().strip() == "1":
        return
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    (RUN_DIR / FORWARD_MARK).write_text("strata switched net.ipv4.ip_forward on\n")
    IP_FORWARD.write_text("1\n")


def restore_forwarding() -> None:
    """Switch IPv4 forwarding off again if strata switched it on."""
    mark = RUN_DIR / FORWARD_MARK
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
    """Ids of this state root's running containers on a bridge network, but `exclude`."""
    return [
        c.id
        for c in root.containers()
        if c.id != exclude
        and c.config.network not in ("none", "host")
        and c.effective_state().status == RUNNING
    ]


def leave(container_id: str, address: str, bridge: str = BRIDGE) -> None:
    """A bridge container on its way out: its lease goes. Its veth goes with its network
    namespace, which the kernel tears down once the container's last process is gone (deleting
    it here would wait ~15 ms on that same teardown, on every exit); one whose namespace is
    still held is collected by `tidy`. Call with the state lock held."""
    with host_lock():
        release_address(bridge, address, container_id)


def _bridge_ports(bridge: str) -> list[str]:
    try:
        return sorted(os.listdir(f"/sys/class/net/{bridge}/brif"))
    except FileNotFoundError:
        return []


def tidy(root: StateRoot, *, exclude: str = "") -> list[str]:
    """What this state root's containers that do not run left behind (`exclude` counts as not
    running: it is the caller's, on its way out): their veths (the kernel removes a veth with
    its namespace, but not while something still holds the namespace) and every lease whose
    monitor is gone. Bridges stay (`prune`). What was removed. Call as root with the state lock
    held."""
    running = set(bridge_containers(root, exclude=exclude))
    dead = {veth_name(c.id) for c in root.containers() if c.id not in running}
    removed = []
    for veth in strata_veths():
        if veth in dead:
            _delete_link(veth)
            removed.append(veth)
    with host_lock():
        _stale_leases()
    return removed


def prune(root: StateRoot) -> list[str]:
    """`strata network prune`: `tidy`, then every strata bridge no container uses (no port left
    on it, whichever state root's), and, with the last bridge, table `ip strata` and the
    forwarding strata switched on. What was removed. Call as root with the state lock held."""
    removed = tidy(root)
    with host_lock():
        had_table = nat_table_exists()
        for bridge in sorted(strata_bridges()):
            if not _bridge_ports(bridge):
                _delete_link(bridge)
                _drop_leases_dir(bridge)  # hook: user networks' bridges come and go
                removed.append(bridge)
        removed += _after_bridges_went(had_table)
    return removed


def connect_container_side(
    netns_pid: int,
    address: str,
    net: ipaddress.IPv4Network,
    gw: ipaddress.IPv4Address | None = None,
) -> None:
    """In the network namespace of `netns_pid`, from the host (nsenter: no process in the
    container's PID namespace, so its command keeps the pid docker gives it): address and
    default route (via `gw`, a user network's `--gateway`, else the first address) on eth0."""
    _ip_batch(
        [
            f"addr add {address}/{net.prefixlen} dev eth0",
            "link set eth0 up",
            f"route add default via {gw or gateway(net)}",
        ],
        "container network",
        netns_pid=netns_pid,
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


def nameservers(text: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The `nameserver` addresses of resolv.conf text (lines that are no address skipped)."""
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
    servers = nameservers(host)
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


# -- hooks for user networks (runtime.networks)


def _drop_leases_dir(bridge: str) -> None:
    """Remove the (empty) lease directory of a bridge that is gone."""
    with contextlib.suppress(OSError):
        _leases_dir(bridge).rmdir()


def remove_bridge(bridge: str) -> bool:
    """`strata network rm`: remove `bridge` (its veths go with it), remake table `ip strata`
    without it, and switch the forwarding off again with strata's last bridge. Whether the
    bridge was there. Call as root with the state lock held."""
    with host_lock():
        had_table = nat_table_exists()
        there = os.path.exists(f"/sys/class/net/{bridge}")
        if there:
            _delete_link(bridge)
        _drop_leases_dir(bridge)
        _after_bridges_went(had_table)
    return there
