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
    refused: int = 0          # full-TTL probes answered with a reset


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
