"""Facts about this host read from /proc: default gateways and global IPv6
addresses.  Local files, but parsed defensively all the same: a line that
does not parse is skipped."""

from __future__ import annotations

import ipaddress
import socket
import struct

RTF_UP, RTF_GATEWAY = 0x1, 0x2
#: /proc/net/if_inet6 flags that make an address unusable for a peer.
IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x08, 0x20, 0x40
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(1 << 20).splitlines()
    except OSError:
        return []


def default_gateways(path: str = "/proc/net/route") -> list[str]:
    """The IPv4 default gateways, lowest metric first, without repeats."""
    found = []
    for line in _read(path)[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gateway, flags = int(fields[1], 16), int(fields[2], 16), int(fields[3], 16)
            metric, mask = int(fields[6]), int(fields[7], 16)
        except ValueError:
            continue
        if dest or mask or not gateway or flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY:
            continue
        address = socket.inet_ntoa(struct.pack("<I", gateway & 0xFFFFFFFF))
        found.append((metric, address))
    result = []
    for _, address in sorted(found):
        if address not in result:
            result.append(address)
    return result


def default_gateways_v6(path: str = "/proc/net/ipv6_route") -> list[tuple[str, str]]:
    """The IPv6 default routers as (address, interface), lowest metric first
    (usually link-local: an address is only usable with its interface)."""
    found = []
    for line in _read(path):
        fields = line.split()
        if len(fields) != 10:
            continue
        try:
            dest, plen = bytes.fromhex(fields[0]), int(fields[1], 16)
            hop, metric, flags = bytes.fromhex(fields[4]), int(fields[5], 16), int(fields[8], 16)
        except ValueError:
            continue
        if (len(dest) != 16 or len(hop) != 16 or any(dest) or plen or not any(hop)
                or flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY):
            continue
        found.append((metric, str(ipaddress.IPv6Address(hop)), fields[9]))
    return [(address, ifname) for _, address, ifname in sorted(found)]


def global_ipv6_addresses(path: str = "/proc/net/if_inet6") -> list[tuple[str, str]]:
    """This host's global unicast IPv6 addresses (2000::/3, not tentative,
    deprecated or failed duplicate detection) as (address, interface)."""
    found = []
    for line in _read(path):
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
