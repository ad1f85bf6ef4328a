"""What this side saw while punching, and the line that explains a failure."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class Observations:
    """Counted by the techniques of one session (see :func:`explain`)."""

    peer: str
    family: int
    clock_error: float
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

    def summary(self) -> str:
        """The counters, for -v."""
        return (f"{self.probes} probes ({self.refused} reset, {self.unreachable} ICMP, "
                f"{self.silent} unanswered), sentinels answered by {self.sentinel_refused} "
                f"resets and {self.sentinel_unreachable} ICMP errors, {self.connections} "
                f"connections ({self.not_punchcat} not punchcat, {self.no_hello} without hello)")


def explain(obs: Observations) -> str:
    """The failure line: what was observed and what it suggests."""
    if not obs.ports:
        return (f"no connection to {obs.peer}: none of the candidate ports "
                f"could be bound here")
    heard = (f"; its router answered {obs.refused} probes with a reset, so it is "
             f"reachable" if obs.refused else "")
    family = "IPv6" if obs.family == socket.AF_INET6 else "IPv4"
    return (f"no connection to {obs.peer}: is punchcat running there, pointed at this "
            f"host's public {family} address, with a clock within "
            f"{2 * obs.clock_error:g} s of this one{heard}? Both NATs must preserve "
            f"source ports; a NAT that randomises them cannot be punched")
