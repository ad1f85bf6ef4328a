"""What this side saw while punching, and the line that explains a failure.

The techniques count what happened to their SYNs in one
:class:`Observations`; :func:`explain` turns it into the last line of a
failed run: what was seen, then what it suggests, and nothing it does not
support.  Some causes look alike from one side (a peer that is not
running, a clock too far off and a NAT that gives random ports all leave
our probes unanswered and no SYN of the peer's arriving), so the line names
the observation and the checks that tell them apart, with this side's clock
reading to compare with the peer's line.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from ..addresses import is_shared
from .hops import HopsResult


#: Distinct local errors and hello refusals kept (the peer's address is
#: shared with whoever stands behind its NAT: a bound on what they can add).
KEPT_REASONS = 8
#: connect() errors that are not this host's network failing: the 4-tuple is
#: still in TIME_WAIT (EADDRNOTAVAIL), or the port is busy.
NOT_LOCAL = {errno.EADDRNOTAVAIL, errno.EADDRINUSE}


@dataclass
class Observations:
    """Counted by the techniques of one session (see :func:`explain`)."""

    peer: str
    family: int
    clock_error: float
    clock: Callable[[], float] = time.time
    route: HopsResult | None = None     # what hop discovery found
    ports: int = 0            # candidate ports held at the end
    unbindable: int = 0       # candidate ports another program holds here
    probes: int = 0           # full-TTL SYNs sent
    refused: int = 0          # ... answered with a reset
    unreachable: int = 0      # ... answered with an ICMP error
    silent: int = 0           # ... with no answer before the port's next socket
    sentinel_refused: int = 0  # low-TTL SYNs answered with a reset (someone that close)
    sentinel_unreachable: int = 0
    connections: int = 0      # TCP connections completed (the peer's SYN met ours)
    not_punchcat: int = 0     # ... that turned out not to be a punchcat
    no_hello: int = 0         # ... on which no hello came
    random_ports: int = 0     # sentinels of the random-port fallback from random ports
    guesses: int = 0          # the fallback's guesses of the peer's ports
    mapped: int = 0           # candidate ports the home router forwards to this host
    notes: list[str] = field(default_factory=list)   # techniques' own findings
    #: connect() calls this host itself refused (errno name -> count): no
    #: route, network unreachable, a local firewall; nothing left the host.
    local_errors: dict[str, int] = field(default_factory=dict)
    #: Punchcats that answered but cannot work with this one (reason -> count).
    incompatible: dict[str, int] = field(default_factory=dict)

    def local_error(self, err: int) -> None:
        """A connect() failed at once, here (errors that say nothing about
        the path are left out: a 4-tuple still in TIME_WAIT)."""
        if err in NOT_LOCAL:
            return
        name = errno.errorcode.get(err, str(err))
        if name in self.local_errors or len(self.local_errors) < KEPT_REASONS:
            self.local_errors[name] = self.local_errors.get(name, 0) + 1

    def refused_hello(self, reason: str) -> bool:
        """A punchcat that cannot work with us answered; True the first time
        this reason is seen (to be said at once)."""
        if reason in self.incompatible:
            self.incompatible[reason] += 1
            return False
        if len(self.incompatible) < KEPT_REASONS:
            self.incompatible[reason] = 1
        return True

    def summary(self) -> str:
        """The counters, for -v."""
        return (f"{self.probes} probes ({self.refused} reset, {self.unreachable} ICMP, "
                f"{self.silent} unanswered), sentinels answered by {self.sentinel_refused} "
                f"resets and {self.sentinel_unreachable} ICMP errors, {self.connections} "
                f"connections ({self.not_punchcat} not punchcat, {self.no_hello} without hello), "
                f"{self.guesses} guesses against {self.random_ports} random ports")


def explain(seen: Observations) -> str:
    """The failure line: what was observed and what it suggests."""
    peer = seen.peer
    if not seen.ports:
        return (f"no connection to {peer}: none of the candidate ports could be bound here "
                f"({seen.unbindable} are in use by other programs)")
    facts: list[str] = []
    route = seen.route
    local = ", ".join(f"{_strerror(name)} ({name})" for name in seen.local_errors)
    if local:
        # This host's own error comes first: nothing else is worth reading then.
        nothing_left = not (seen.probes or seen.connections or seen.guesses)
        facts.append(f"this host could not send {'any' if nothing_left else 'some'} of its "
                     f"SYNs: {local}")
    if route is not None:
        facts.append(f"this side: {route.describe()}")
    if seen.incompatible:
        facts.append("a punchcat answered that cannot work with this one: "
                     + "; ".join(seen.incompatible))
    if seen.connections:
        reached = [f"{seen.connections} connections completed"]
        if seen.not_punchcat:
            reached.append(f"{seen.not_punchcat} to something that is not punchcat "
                           f"(a server on a candidate port there?)")
        if seen.no_hello:
            reached.append(f"{seen.no_hello} carried no hello")
        facts.append(", ".join(reached))
    else:
        facts.append("no SYN of its reached this host")
    if seen.probes:
        if seen.refused == seen.probes:
            facts.append(f"its side answered all {seen.probes} probes with a reset")
        elif seen.refused + seen.unreachable == 0:
            facts.append(f"none of {seen.probes} probes was answered")
        else:
            facts.append(f"of {seen.probes} probes {seen.refused} met a reset, "
                         f"{seen.unreachable} an ICMP error")
    if seen.sentinel_refused:
        facts.append(f"{seen.sentinel_refused} low-TTL sentinels were answered by a reset "
                     f"(the peer or its router is nearer than they reach)")
    hints: list[str] = []
    if local and not (seen.probes or seen.connections or seen.guesses):
        return (f"no connection to {peer}: {'; '.join(facts)}. Check this host's network "
                f"connection and its route to {peer} (ip route get {peer}).")
    if route is not None and route.own_router and not seen.connections:
        hints.append(f"{peer} is this side's own router: if the peer is behind the same "
                     f"router, the router does not loop traffic back to it; name the peer's "
                     f"address in the LAN instead")
    if seen.unreachable and seen.unreachable >= seen.probes // 2:
        hints.append(f"the network says {peer} is unreachable: check the address")
    family = "IPv6" if seen.family == socket.AF_INET6 else "IPv4"
    here = time.strftime("%H:%M:%S UTC", time.gmtime(seen.clock()))
    hints.append(f"is punchcat running there, pointed at this host's public {family} address, "
                 f"with a clock within {2 * seen.clock_error:g} s of this one (here {here})?")
    if route is not None:
        carrier = [h.address for h in route.hops[:route.inside]
                   if h.address and is_shared(h.address)]
        if carrier:
            hints.append(f"this side is behind a carrier-grade NAT ({carrier[0]}), "
                         f"which often gives each connection a random port")
    hints += seen.notes
    if seen.guesses:
        hints.append(f"the random-port fallback guessed {seen.guesses} of the peer's ports "
                     f"against {seen.random_ports} random ports of this side without a hit: "
                     f"if both NATs give each connection a random port (carrier-grade NAT, "
                     f"phone hotspots), no direct path exists without a router's help "
                     f"(port mapping) or a relay you run (--relay)")
    elif not seen.connections and not any("random port" in h for h in hints):
        hints.append("if all that holds, a NAT that gives each connection a random port "
                     "(carrier-grade NAT, phone hotspots) would explain it")
    return f"no connection to {peer}: {'; '.join(facts)}. {' '.join(_sentence(h) for h in hints)}"


def explain_all(seen: list[Observations]) -> str:
    """The failure line for one or several peer addresses."""
    return " ".join(explain(s) for s in seen)


def _strerror(name: str) -> str:
    """"Network is unreachable" for "ENETUNREACH"."""
    return os.strerror(getattr(errno, name)) if hasattr(errno, name) else name


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(("?", ".")) else text + "."
