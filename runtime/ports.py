"""Published ports: `-p/--publish [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]` and `-P`.

A mapping is kept in a container's config as canonical text, one port per entry (ranges are
expanded): `HOST_IP:HOST_PORT:CONTAINER_PORT/PROTO`, where an empty HOST_IP means every address of
the host and HOST_PORT 0 means "a free port, picked when the container starts" (`-p 80`, `-P`).
The same grammar as docker's and podman's: `-p 8080:80`, `-p 127.0.0.1:8080:80/udp`,
`-p 127.0.0.1::80`, `-p 8000-8002:80-82`, `-p [::1]:8080:80`, and docker's `-p 8000-8010:80`
(the first host port of the range that is free when the container starts), kept as
`:8000-8010:80/tcp`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from unionfs.errors import UsageError

PROTOCOLS: Final = ("tcp", "udp")


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One published port: host side (address, port; "" and 0 mean any) to container side."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_port_last: int = 0  # > host_port: any free port of host_port..host_port_last

    def text(self) -> str:
        """The canonical form kept in config.json (IPv6 addresses in brackets)."""
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        host = f"{self.host_port}-{self.host_port_last}" if self.host_port_last else self.host_port
        return f"{ip}:{host}:{self.container_port}/{self.protocol}"

    @classmethod
    def from_text(cls, text: str) -> PortMapping:
        """Inverse of `text()` (for config.json, already checked when it was written)."""
        rest, _, protocol = text.rpartition("/")
        ip, _, ports = rest.rpartition("]:") if rest.startswith("[") else rest.partition(":")
        host_port, _, container_port = ports.partition(":")
        first, _, last = host_port.partition("-")
        return cls(ip.removeprefix("["), int(first), int(container_port), protocol, int(last or 0))

    def host_ports(self) -> range:
        """The host ports this mapping may take (one, or a range to pick a free one from)."""
        return range(self.host_port, max(self.host_port, self.host_port_last) + 1)

    def key(self) -> str:
        """The container side, as docker names it: `80/tcp`."""
        return f"{self.container_port}/{self.protocol}"


def _range(text: str, spec: str, what: str) -> range:
    low, dash, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if dash else first
    except ValueError:
        raise UsageError(f"-p {spec}: {what} {text!r} is not a port or range", 125) from None
    if not 1 <= first <= last <= 65535:
        raise UsageError(f"-p {spec}: {what} {text!r} is not within 1-65535", 125)
    return range(first, last + 1)


def parse_publish(spec: str) -> tuple[PortMapping, ...]:
    """One `-p` value, as docker reads it; its mappings, one per port."""
    body, slash, protocol = spec.partition("/")
    protocol = protocol.lower() if slash else "tcp"
    if protocol not in PROTOCOLS:
        raise UsageError(f"-p {spec}: protocol {protocol!r}: expected tcp or udp", 125)
    host_ip = ""
    if body.startswith("["):  # [IPv6]:HOST_PORT:CONTAINER_PORT
        ip, found, body = body[1:].partition("]:")
        if not found:
            raise UsageError(f"-p {spec}: expected [IPv6]:HOST_PORT:CONTAINER_PORT", 125)
        host_ip = ip
        fields = ["", *body.split(":")]
    else:
        fields = body.split(":")
    if len(fields) > 3 or not fields[-1]:
        raise UsageError(f"-p {spec}: expected [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]", 125)
    if len(fields) == 3 and fields[0]:
        host_ip = fields[0]
    if host_ip:
        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise UsageError(f"-p {spec}: {host_ip!r} is not an IP address", 125) from None
    inner = _range(fields[-1], spec, "container port")
    outer_text = fields[-2] if len(fields) >= 2 else ""
    if not outer_text:
        return tuple(PortMapping(host_ip, 0, p, protocol) for p in inner)
    outer = _range(outer_text, spec, "host port")
    if len(outer) == len(inner):
        return tuple(
            PortMapping(host_ip, h, c, protocol) for h, c in zip(outer, inner, strict=True)
        )
    if len(inner) == 1:  # -p 8000-8010:80: the first free port of the range, as docker
        return (PortMapping(host_ip, outer[0], inner[0], protocol, outer[-1]),)
    raise UsageError(f"-p {spec}: the host and container ranges differ in length", 125)


def parse_publish_all(values: Sequence[str]) -> tuple[PortMapping, ...]:
    """Every `-p` value; a (host address, host port, protocol) published twice is refused."""
    mappings = tuple(m for value in values for m in parse_publish(value))
    check_unique(mappings)
    return mappings


def check_unique(mappings: Iterable[PortMapping]) -> None:
    """Refuse a host port published twice (an empty address, every address, clashes with any).
    Host port ranges (`8000-8010:80`) are not checked: each takes a port left free."""
    fixed = [m for m in mappings if m.host_port and not m.host_port_last]
    for i, a in enumerate(fixed):
        for b in fixed[i + 1 :]:
            same_ip = a.host_ip == b.host_ip or "" in (a.host_ip, b.host_ip)
            if same_ip and (a.host_port, a.protocol) == (b.host_port, b.protocol):
                raise UsageError(
                    f"-p: host port {a.host_port}/{a.protocol} is published twice", 125
                )


def exposed_ports(exposed: Iterable[str]) -> tuple[PortMapping, ...]:
    """`-P`: the image's ExposedPorts keys (`80/tcp`, `53/udp`, `8000-8002/tcp`), each to a free
    host port on every address."""
    mappings: list[PortMapping] = []
    for key in exposed:
        port, _, protocol = key.partition("/")
        protocol = (protocol or "tcp").lower()
        if protocol not in PROTOCOLS:
            continue  # sctp: not published, as podman without sctp support
        mappings += [PortMapping("", 0, p, protocol) for p in _range(port, key, "exposed port")]
    return tuple(mappings)
