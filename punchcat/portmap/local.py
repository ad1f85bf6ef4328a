"""Facts about this host read from /proc: default gateways (from the
routing tables, :mod:`punchcat.routes`) and global IPv6 addresses.  Local
files, but parsed defensively all the same: a line that does not parse is
skipped."""

from __future__ import annotations

import ipaddress

from ..routes import RTF_GATEWAY, RTF_UP, Route, ipv4_routes, ipv6_routes, read_table

#: /proc/net/if_inet6 flags that make an address unusable for a peer.
IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x08, 0x20, 0x40
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _default_routes(routes: list[Route]) -> list[Route]:
    """The default routes through a gateway that are up, lowest metric first."""
    return sorted((r for r in routes if r.network.prefixlen == 0 and r.gateway is not None
                   and r.flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY),
                  key=lambda r: (r.metric, str(r.gateway), r.interface))


def default_gateways(path: str = "/proc/net/route") -> list[str]:
    """The IPv4 default gateways, lowest metric first, without repeats."""
    result = []
    for route in _default_routes(ipv4_routes(path)):
        if str(route.gateway) not in result:
            result.append(str(route.gateway))
    return result


def default_gateways_v6(path: str = "/proc/net/ipv6_route") -> list[tuple[str, str]]:
    """The IPv6 default routers as (address, interface), lowest metric first
    (usually link-local: an address is only usable with its interface)."""
    return [(str(r.gateway), r.interface) for r in _default_routes(ipv6_routes(path))]


def global_ipv6_addresses(path: str = "/proc/net/if_inet6") -> list[tuple[str, str]]:
    """This host's global unicast IPv6 addresses (2000::/3, not tentative,
    deprecated or failed duplicate detection) as (address, interface)."""
    found = []
    for line in read_table(path):
        fields = line.split()
        if len(fields) != 6:
            continue
        try:
            raw, scope, flags = bytes.fromhex(fields[0]), int(fields[3], 16), int(fields[4], 16)
        except ValueError:
            continue
        if len(raw) != 16 or scope != 0:
            continue
        if flags & (IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE):
            continue
        address = ipaddress.IPv6Address(raw)
        if address in GLOBAL_UNICAST:
            found.append((str(address), fields[5]))
    return found
