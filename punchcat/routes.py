"""This host's routing tables, read from Linux's /proc as typed routes.

``/proc/net/route`` is the IPv4 main table: a header line, then a route a
line: interface, destination, gateway, flags (hex), refcnt, use, metric
(decimal), mask, MTU, window, IRTT.  Destination, gateway and mask are the
32-bit word as it lies in memory, in hex: the address's bytes reversed on
a little-endian machine (x86, ARM), which is what this reader assumes
(``0101A8C0`` is 192.168.1.1).  ``/proc/net/ipv6_route`` has no header and
lists every table: destination (32 hex digits), prefix length, source and
its prefix length, next hop, metric, refcnt, use, flags (all hex),
interface.  It also holds the local table's routes (a /128 for each of this
host's addresses, on that address's interface; ``::1`` on ``lo``) and a
reject route on ``lo`` (the unreachable default, flags ``0x00200200``,
without ``RTF_UP``; measured, Linux 6.18).

Local files, but parsed defensively all the same: a line that does not
parse is skipped, and a table that cannot be read is empty.  No other
module reads these files; :func:`on_link` and the router client's default
gateways (:mod:`punchcat.portmap.local`) read :class:`Route` values.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

#: ``rtentry.rt_flags``: the route is usable; it goes through a gateway.
RTF_UP, RTF_GATEWAY = 0x1, 0x2
#: The most of a table read: far more than any host's routes, and a bound
#: on what a strange /proc can make us hold.
LIMIT = 1 << 20


@dataclass(frozen=True)
class Route:
    """One route of a table."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None   # None: on link
    interface: str
    metric: int
    flags: int                     # RTF_*


def read_table(path: str) -> list[str]:
    """The lines of a /proc table (at most :data:`LIMIT` characters); none if
    it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(LIMIT).splitlines()
    except OSError:
        return []


def _word(text: str) -> ipaddress.IPv4Address:
    """An IPv4 address written as /proc/net/route writes it."""
    value = int(text, 16)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"not a 32-bit word: {text}")
    return ipaddress.IPv4Address(value.to_bytes(4, "little"))


def ipv4_routes(path: str = "/proc/net/route") -> list[Route]:
    """The IPv4 main table, in the kernel's order."""
    routes = []
    for line in read_table(path)[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gateway, mask = _word(fields[1]), _word(fields[2]), _word(fields[7])
            flags, metric = int(fields[3], 16), int(fields[6])
            network = ipaddress.IPv4Network((dest, str(mask)))   # a non-contiguous mask: skipped
        except ValueError:
            continue
        routes.append(Route(network, gateway if int(gateway) else None, fields[0], metric, flags))
    return routes


def ipv6_routes(path: str = "/proc/net/ipv6_route") -> list[Route]:
    """Every IPv6 table, in the kernel's order."""
    routes = []
    for line in read_table(path):
        fields = line.split()
        if len(fields) != 10:
            continue
        try:
            dest, plen = bytes.fromhex(fields[0]), int(fields[1], 16)
            hop, metric, flags = bytes.fromhex(fields[4]), int(fields[5], 16), int(fields[8], 16)
            if len(dest) != 16 or len(hop) != 16:
                continue
            network = ipaddress.IPv6Network((dest, plen))
        except ValueError:
            continue
        gateway = ipaddress.IPv6Address(hop) if any(hop) else None
        routes.append(Route(network, gateway, fields[9], metric, flags))
    return routes


def _counts(route: Route) -> bool:
    """Whether *route* can carry a packet toward its network: IPv4's main
    table shows whether a route is up; IPv6's tables put the reject routes
    (and ``::1``) on ``lo``."""
    if route.network.version == 4:
        return bool(route.flags & RTF_UP)
    return route.interface != "lo"


def on_link(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
            routes: Iterable[Route] | None = None) -> bool:
    """Whether the most specific route to *ip* has no gateway (loopback: yes).

    *routes* default to this host's table for *ip*'s family.  Of equally
    specific routes the first counts; a default route is never on link.
    """
    if ip.is_loopback:
        return True
    if routes is None:
        routes = ipv4_routes() if ip.version == 4 else ipv6_routes()
    best = None
    for route in routes:
        if (ip in route.network and _counts(route)
                and (best is None or route.network.prefixlen > best.network.prefixlen)):
            best = route
    return best is not None and best.gateway is None and best.network.prefixlen > 0
