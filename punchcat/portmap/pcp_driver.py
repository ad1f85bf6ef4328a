"""The PCP driver (RFC 6887): MAP requests for TCP, each with its nonce.

PCP has no address query: the probe maps a port (the first one; for a
what-is-my-address query, a throwaway port held for the moment) and learns
the public address from the answer.  When PCP is chosen at that gateway,
the probe's mapping is kept as that port's; otherwise it is removed.  A
mapping is renewed and deleted with the nonce that made it, and a deletion
touches nothing else (another protocol's mapping of the port, or another
nonce's, is left: the router answers NOT_AUTHORIZED).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Callable

from . import pcp
from .driver import Held, Removal, UdpDriver
from .exchange import send_once
from .results import Answer, Mapping, NoAnswer, Refusal

#: How long removing a probe's unused mapping may take, in the background.
DROP_PROBE_TIME = 0.5


class PcpDriver(UdpDriver):
    protocol = "pcp"
    port = pcp.PORT
    removes_by_port = False
    lost_state = staticmethod(pcp.epoch_lost_state)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._probes: dict[str, tuple[int, bytes]] = {}   # gw -> (port, nonce), once sent
        self._dropped: set[str] = set()                    # gateways whose probe is not kept
        self._probe_held: dict[str, Held] = {}
        self._throwaway: socket.socket | None = None

    def answer_parser(self, port: int, nonce: bytes | None) -> Callable[[bytes], object]:
        return lambda data: pcp.parse_map_response(data, nonce, port)

    def delete_request(self, port: int, nonce: bytes | None) -> Callable[[str], bytes]:
        return lambda local: pcp.map_request(local, port, nonce, 0, 0)

    def deleted(self, response: pcp.MapResponse) -> bool:
        # NO_RESOURCES: nothing was there (miniupnpd); NOT_AUTHORIZED: what is
        # there is not this nonce's (another protocol or client took it over)
        return response.ok or response.result in (pcp.NOT_AUTHORIZED, pcp.NO_RESOURCES)

    async def probe(self, gw: str, deadline: float) -> Answer:
        if self.ports:
            port = self.ports[0]
        else:
            # What-is-my-address: map a port we hold ourselves for a moment
            # (removed right after).
            self._throwaway = socket.socket()
            self._throwaway.bind(("0.0.0.0", 0))
            port = self._throwaway.getsockname()[1]
        result = await self._map(gw, port, deadline, probe=True)
        if isinstance(result, Refusal):
            raise NoAnswer(result.outcome, result.text)
        address = result.mapping.external_address
        if self.ports and gw not in self._dropped:
            self._probe_held[gw] = result
        text = (f"public address {address}" if self.ports
                else f"public address {address} (from a throwaway mapping, removed)")
        return Answer(self.protocol, gw, "ok", address, text)

    async def map(self, gw: str, port: int, deadline: float,
                  held: Held | None = None) -> Held | Refusal:
        probe = self._probe_held.get(gw)
        if held is None and probe is not None and probe.mapping.internal_port == port:
            return probe
        return await self._map(gw, port, deadline, held=held)

    async def _map(self, gw: str, port: int, deadline: float, probe: bool = False,
                   held: Held | None = None) -> Held | Refusal:
        """One MAP request (a renewal when *held*)."""
        nonce = held.nonce if held else os.urandom(12)
        suggested = held.mapping.external_port if held else port
        local_box: list[str] = []

        def build(local: str) -> bytes:
            local_box.append(local)
            self.requested[(gw, port)] = nonce       # sent: it may map
            if probe:
                self._probes[gw] = (port, nonce)
            return pcp.map_request(local, port, nonce, self.lifetime, suggested)

        try:
            response = await self.pacing.udp(
                gw, pcp.PORT, build, self.answer_parser(port, nonce), deadline,
                resend=(lambda: gw not in self._dropped) if probe else None)
        except NoAnswer as e:
            return e.refusal
        self.check_epoch(gw, response.epoch)
        if response.version == 0:
            self.nothing_mapped(gw, port, nonce, held)
            return Refusal("refused", "the router speaks NAT-PMP only (PCP: unsupported version)")
        self.heard.add(gw)
        if not response.ok:
            self.nothing_mapped(gw, port, nonce, held)
            return Refusal("refused", f"refused: {pcp.result_text(response.result)}")
        mapping = Mapping(self.protocol, gw, port, response.external_port,
                          response.external_address, response.lifetime)
        return Held(mapping, time.monotonic(), nonce, local_box[0])

    async def drop_probes(self, chosen: tuple[str, str] | None) -> None:
        """Remove the mappings of the probes not kept as real mappings: every
        one but the chosen gateway's when PCP is chosen.  Answered or not: an
        answer may be late or lost, and deleting by nonce touches nothing
        else."""
        removals = []
        for gw, (port, nonce) in list(self._probes.items()):
            if chosen == (self.protocol, gw):
                continue
            del self._probes[gw]
            self._dropped.add(gw)            # no more retransmissions of it
            self._probe_held.pop(gw, None)
            if self.requested.get((gw, port)) != nonce:
                continue                     # refused: nothing mapped
            if gw in self.heard:
                removals.append(self.remove_requested(gw, port, nonce,
                                                      time.monotonic() + DROP_PROBE_TIME))
            else:                            # PCP silent so far: one datagram, and again at close
                send_once(gw, pcp.PORT, self.delete_request(port, nonce))
        await asyncio.gather(*removals, return_exceptions=True)
        self._close_throwaway()

    def remove_unanswered(self, skip: Callable[[str, int], bool],
                          deadline: float) -> list[Removal]:
        removals = super().remove_unanswered(skip, deadline)
        self._probes.clear()
        self._close_throwaway()
        return removals

    def _close_throwaway(self) -> None:
        if self._throwaway is not None:
            self._throwaway.close()
            self._throwaway = None
