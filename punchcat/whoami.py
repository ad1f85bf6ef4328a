"""``punchcat --whoami``: the addresses to give the peer, asking no one but the router.

stdout gets the addresses, one a line (scriptable): the public IPv4 address
as the home router reports it (PCP, NAT-PMP or UPnP-IGD), then the global
IPv6 addresses of this host's interfaces.  stderr gets what each answer
means and what to worry about: a router whose own WAN address is private or
shared (100.64.0.0/10) sits behind another NAT, and the address it reports
is not the one the peer must name; no router answered.  Status 0 when at
least one address was found, 1 when none was.
"""

from __future__ import annotations

import sys

from .errors import OutputFailed
from .status import Reporter

#: How long the router is given to answer.
TIMEOUT = 0.5


def whoami_command(reporter: Reporter) -> int:
    from .portmap.client import whoami           # asyncio: imported only when used
    report = whoami(timeout=TIMEOUT)
    addresses = ([report.public_ipv4] if report.public_ipv4 else []) + \
        [address for address, _ in report.ipv6]
    for line in report.lines:
        reporter.notice(line)
    if report.public_ipv4:
        reporter.notice(f"IPv4 {report.public_ipv4}: this network's public address, as its "
                        f"router reports it")
    for address, interface in report.ipv6:
        reporter.notice(f"IPv6 {address}: global, on {interface}")
    for warning in report.warnings:
        reporter.notice(f"warning: {warning}")
    if not addresses:
        reporter.error("no address found: no router answered, and this host has no global "
                       "IPv6 address (ask the peer to name the address a web page shows you)")
        return 1
    try:
        sys.stdout.write("".join(f"{a}\n" for a in addresses))  # stdout-ok: asked for
        sys.stdout.flush()
    except OSError as exc:
        raise OutputFailed.from_os(exc) from None
    return 0
