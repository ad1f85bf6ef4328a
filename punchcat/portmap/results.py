"""What the router client reports, and how a request that mapped nothing says why.

The results are immutable snapshots (:class:`PortmapStatus` with its
:class:`Mapping` and :class:`Answer` records), safe to hand to any thread.
A request that got no mapping gives a :class:`Refusal`: its outcome (one of
a few words, the same for every protocol) and a human text in which router
text is already escaped.  An exchange that gets no usable answer raises
:class:`NoAnswer`, which carries one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The protocols, best first: the order in which discovery prefers them.
PROTOCOLS = ("pcp", "natpmp", "upnp")
NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP"}
#: The failure of a port whose request is still waiting for an answer.
STILL_ASKING = "no answer yet (still asking)"

#: How a request failed: the router said no ("refused"), nothing came in
#: time ("silent"), the port is closed ("closed"), what came cannot be
#: understood ("garbage"), or the network failed here ("error").
Outcome = Literal["refused", "silent", "closed", "garbage", "error"]


@dataclass(frozen=True)
class Refusal:
    """Why a request mapped nothing (or a probe learnt nothing)."""

    outcome: Outcome
    text: str                    # human, router text already escaped


class NoAnswer(Exception):
    """A request got no usable answer: :attr:`refusal` says how."""

    def __init__(self, outcome: Outcome, text: str):
        super().__init__(text)
        self.refusal = Refusal(outcome, text)


@dataclass(frozen=True)
class Mapping:
    """One TCP port the router forwards to us."""

    protocol: str                # "pcp", "natpmp" or "upnp"
    gateway: str
    internal_port: int
    external_port: int
    external_address: str | None
    lifetime: int                # seconds granted; 0 = permanent (UPnP, removed on close)


@dataclass(frozen=True)
class Answer:
    """What one protocol said at one gateway, in discovery."""

    protocol: str
    gateway: str
    outcome: str                 # "pending", "ok", or a Refusal's outcome
    public_address: str | None = None
    text: str = ""               # human, router text already escaped

    def line(self) -> str:
        return f"{NAMES[self.protocol]}: gateway {self.gateway}: {self.text}"


@dataclass(frozen=True)
class PortmapStatus:
    """A snapshot of a :class:`~punchcat.portmap.client.PortMapper` (or of a
    what-is-my-address query)."""

    finished: bool               # the first round of mapping is over (a whoami: all answers are in)
    gateways: tuple[str, ...]
    protocol: str | None         # the protocol used for mapping, if any
    gateway: str | None
    public_address: str | None   # the router's WAN IPv4, as it reports it
    mappings: tuple[Mapping, ...]
    failures: tuple[tuple[int, str], ...]   # (internal port, why), escaped
    answers: tuple[Answer, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]       # mapping, renewal and removal events, in order

    def external_port(self, internal_port: int) -> int | None:
        for m in self.mappings:
            if m.internal_port == internal_port:
                return m.external_port
        return None

    @property
    def lines(self) -> list[str]:
        """Everything in human terms, for ``-v``."""
        out = [a.line() for a in self.answers]
        out += list(self.notes)
        out += [f"warning: {w}" for w in self.warnings]
        return out


def ports_text(ports: list[int]) -> str:
    return ", ".join(map(str, ports))


def names_text(protocols) -> str:
    """"PCP", "PCP or UPnP", "PCP, NAT-PMP or UPnP"."""
    names = [NAMES[p] for p in protocols]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
