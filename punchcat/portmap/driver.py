"""What a protocol driver is: the interface the engine drives, and what the
two UDP protocols (PCP and NAT-PMP) share.

A driver speaks one protocol to the gateways.  It probes a gateway (learns
the public address, or why not), maps a port and renews it, deletes it, and
keeps that protocol's own state: what it asked for and may have mapped,
which gateways answered it, their epochs.  The engine (:mod:`.engine`) never
asks which protocol a driver speaks: it races the probes, chooses, schedules
and removes through these methods alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from .exchange import Pacing, send_once
from .results import NAMES, Answer, Mapping, NoAnswer, Refusal


@dataclass
class Held:
    """A mapping we hold, with what renewing and removing it needs."""

    mapping: Mapping
    granted_at: float
    nonce: bytes | None = None           # PCP
    local_address: str | None = None     # PCP client address, UPnP internal client


#: A removal not yet started, for the port it removes.
Removal = tuple[int, Awaitable[bool]]


class Driver:
    """One protocol: subclasses implement :meth:`probe`, :meth:`map`,
    :meth:`delete`, :meth:`wants` and :meth:`remove_unanswered`."""

    protocol = ""
    #: A deletion removes the port whoever asked for it (NAT-PMP and UPnP
    #: delete by port), so a port another engine of this process still wants
    #: must be left to it; PCP deletes by nonce, only its own.
    removes_by_port = True

    def __init__(self, pacing: Pacing, ports: list[int], lifetime: int,
                 note: Callable[[str], None]):
        self.pacing = pacing
        self.ports = ports
        self.lifetime = lifetime
        self.note = note             # a mapping event, for the status's notes

    @property
    def name(self) -> str:
        return NAMES[self.protocol]

    async def probe(self, gw: str, deadline: float) -> Answer:
        """Ask *gw* before *deadline*: an "ok" answer with the public address,
        or :class:`NoAnswer` saying why not."""
        raise NotImplementedError

    async def map(self, gw: str, port: int, deadline: float,
                  held: Held | None = None) -> Held | Refusal:
        """Map TCP *port* at *gw* (renew it when *held*)."""
        raise NotImplementedError

    async def delete(self, held: Held, deadline: float) -> bool:
        """Remove a held mapping; True once the router confirms it is gone."""
        raise NotImplementedError

    def wants(self, gw: str, port: int) -> bool:
        """Whether a request for *port* at *gw* was sent and may have mapped it."""
        raise NotImplementedError

    def remove_unanswered(self, skip: Callable[[str, int], bool],
                          deadline: float) -> list[Removal]:
        """The removals of what requests whose answer never came may have
        mapped (but those *skip* names: (gateway, port)), then forget them."""
        raise NotImplementedError

    async def drop_probes(self, chosen: tuple[str, str] | None) -> None:
        """Discovery chose (protocol, gateway): undo what probes left that
        will not be used.  Probes that only ask leave nothing."""

    def awaiting_answer(self) -> bool:
        """Whether a mapping request waits for an answer that removal could
        not replace: what it maps cannot be deleted blindly."""
        return False


class UdpDriver(Driver):
    """PCP and NAT-PMP: datagrams to the gateway's port 5351, each answer
    carrying the router's epoch.  A request sent may have mapped until the
    router says otherwise, so it is :attr:`requested` until removed."""

    port = 0
    @staticmethod
    def lost_state(prev_epoch: int, prev_time: float, epoch: int, now: float) -> bool:
        """The codec's test of two epochs: did the router lose its state between them?"""
        raise NotImplementedError

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Sent and possibly mapped, until removed: (gw, port) -> PCP nonce (None for NAT-PMP)
        self.requested: dict[tuple[str, int], bytes | None] = {}
        self.heard: set[str] = set()             # gateways that answered this protocol
        self._epochs: dict[str, tuple[int, float]] = {}

    def answer_parser(self, port: int, nonce: bytes | None) -> Callable[[bytes], object]:
        """Parses the answer to a mapping request (or a deletion) of *port*."""
        raise NotImplementedError

    def delete_request(self, port: int, nonce: bytes | None) -> Callable[[str], bytes]:
        """Builds the deletion of *port* from our address."""
        raise NotImplementedError

    def deleted(self, response) -> bool:
        """Whether the answer to a deletion says the mapping is gone."""
        return response.ok

    def check_epoch(self, gw: str, epoch: int) -> bool:
        """Record the epoch; True (and a note) when the router lost its state."""
        now = time.monotonic()
        previous = self._epochs.get(gw)
        self._epochs[gw] = (epoch, now)
        if previous is not None and self.lost_state(previous[0], previous[1], epoch, now):
            self.note(f"{self.name}: gateway {gw} restarted (epoch {epoch}): mapping again")
            return True
        return False

    def nothing_mapped(self, gw: str, port: int, nonce: bytes | None,
                       held: Held | None) -> None:
        """A first request was refused: it mapped nothing, nothing to remove."""
        if held is None and self.requested.get((gw, port), b"") == nonce:
            del self.requested[(gw, port)]

    def wants(self, gw: str, port: int) -> bool:
        return (gw, port) in self.requested

    async def delete(self, held: Held, deadline: float) -> bool:
        m = held.mapping
        return await self._delete(m.gateway, m.internal_port, held.nonce, deadline)

    async def _delete(self, gw: str, port: int, nonce: bytes | None, deadline: float) -> bool:
        try:
            response = await self.pacing.udp(gw, self.port, self.delete_request(port, nonce),
                                             self.answer_parser(port, nonce), deadline,
                                             mapping=False)
        except NoAnswer:
            return False
        return self.deleted(response)

    async def remove_requested(self, gw: str, port: int, nonce: bytes | None,
                               deadline: float) -> bool:
        if not await self._delete(gw, port, nonce, deadline):
            return False
        if self.requested.get((gw, port), b"") == nonce:
            del self.requested[(gw, port)]
        return True

    def remove_unanswered(self, skip: Callable[[str, int], bool],
                          deadline: float) -> list[Removal]:
        """Deleting these is harmless: a deletion is bound to our address
        and port (or nonce).  A gateway that never answered this protocol
        gets one datagram each, not waited for."""
        removals = []
        for (gw, port), nonce in list(self.requested.items()):
            if skip(gw, port):
                continue
            if gw in self.heard:
                removals.append((port, self.remove_requested(gw, port, nonce, deadline)))
            else:
                send_once(gw, self.port, self.delete_request(port, nonce))
        self.requested.clear()
        return removals
