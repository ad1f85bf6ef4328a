"""Address classes: what an address alone tells about where it lies.

NATs, home networks and carriers take their inside addresses from a few
reserved blocks, so an address's block tells, before any packet is sent,
whether it can be a hop on our side of the NATs, a peer on our own network
or a router behind a carrier's NAT.  Pure: no I/O (whether an address is on
one of this host's links is a question for the routing table,
:func:`punchcat.routes.on_link`).

* *Inside* (:func:`is_inside`): the addresses a NAT or a home network uses on
  its inside: private (RFC 1918), shared (RFC 6598, 100.64.0.0/10, between a
  carrier-grade NAT and its customers' routers), link-local and loopback; for
  IPv6 unique-local, link-local and loopback.  A hop that answers from one
  is ours (hop discovery, :mod:`punchcat.traverse.hops`).
* *Near* (:func:`is_near`): the addresses a peer has only on our own network
  (private, link-local, unique-local): no NAT lies between.  Not shared
  addresses (they lie between a carrier's NAT and its customers' routers,
  not on our network) nor loopback (discovery probes it and hears it at hop
  1, which says the same).
* *Shared*, *private* (:func:`classify_ipv4`): what a router's WAN address
  says is beyond it: a carrier-grade NAT, another NAT.

An IPv4-mapped IPv6 address (``::ffff:192.168.1.1``) is read as the IPv4
address it carries (:func:`unmapped`) everywhere but in :func:`is_near`.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: RFC 1918: home and office networks.
PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
#: RFC 6598: carrier-grade NAT's shared address space.
SHARED = ipaddress.IPv4Network("100.64.0.0/10")
LINK_LOCAL = (ipaddress.IPv4Network("169.254.0.0/16"), ipaddress.IPv6Network("fe80::/10"))
LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))
#: RFC 4193: IPv6's private addresses.
UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")

_INSIDE = (*PRIVATE, SHARED, *LINK_LOCAL, *LOOPBACK, UNIQUE_LOCAL)
_NEAR = (*PRIVATE, *LINK_LOCAL, UNIQUE_LOCAL)


def unmapped(ip: IPAddress) -> IPAddress:
    """*ip*, or the IPv4 address an IPv4-mapped IPv6 address carries."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _within(ip: IPAddress, networks: tuple) -> bool:
    return any(ip in net for net in networks if net.version == ip.version)


def is_inside(address: str | IPAddress) -> bool:
    """Whether *address* is one a NAT or a home network uses on the inside."""
    return _within(unmapped(ipaddress.ip_address(address)), _INSIDE)


def is_near(address: str | IPAddress) -> bool:
    """Whether a peer with *address* is on our own network by its block alone
    (an IPv4-mapped address is not unmapped here, unlike in :func:`is_inside`)."""
    return _within(ipaddress.ip_address(address), _NEAR)


def is_shared(address: str | IPAddress) -> bool:
    """Whether *address* is in carrier-grade NAT's shared space."""
    return unmapped(ipaddress.ip_address(address)) in SHARED


def classify_ipv4(address: str) -> str:
    """The class of an IPv4 address: ``"private"`` (RFC 1918), ``"shared"``
    (RFC 6598, 100.64/10, carrier-grade NAT), ``"unspecified"`` (0.0.0.0),
    ``"other-special"`` (loopback, link-local, multicast, reserved) or
    ``"public"``."""
    ip = ipaddress.IPv4Address(address)
    if ip in SHARED:
        return "shared"
    if _within(ip, PRIVATE):
        return "private"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved:
        return "other-special"
    return "public"
