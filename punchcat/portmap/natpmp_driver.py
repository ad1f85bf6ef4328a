"""The NAT-PMP driver (RFC 6886): the external address request as the probe,
TCP mapping requests, and deletion by port (a lifetime of 0).

A NAT-PMP deletion removes the port's mapping whoever asked for it, so a
port another mapper of this process still wants is left to it (the
engine's job, told by :attr:`~.driver.Driver.removes_by_port`).
"""

from __future__ import annotations

import time
from typing import Callable

from . import natpmp
from .common import MalformedResponse
from .driver import Held, UdpDriver
from .results import Answer, Mapping, NoAnswer, Refusal


def _parser(kind: type, port: int | None) -> Callable[[bytes], object]:
    """Parses an answer of *kind* (to a mapping of TCP *port*, if given)."""
    def parse(data: bytes):
        response = natpmp.parse_response(data)
        if not isinstance(response, kind):
            raise MalformedResponse("a NAT-PMP answer to another request")
        if (port is not None and response.internal_port not in (port, 0)
                or port is not None and response.opcode != natpmp.OP_MAP_TCP):
            raise MalformedResponse("a NAT-PMP answer for another port")
        return response
    return parse


class NatPmpDriver(UdpDriver):
    protocol = "natpmp"
    port = natpmp.PORT
    lost_state = staticmethod(natpmp.epoch_lost_state)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._addresses: dict[str, str] = {}     # gw -> public address, from the probe

    def answer_parser(self, port: int, nonce: bytes | None) -> Callable[[bytes], object]:
        return _parser(natpmp.MapResponse, port)

    def delete_request(self, port: int, nonce: bytes | None) -> Callable[[str], bytes]:
        return lambda _: natpmp.map_tcp_request(port, 0, 0)

    async def probe(self, gw: str, deadline: float) -> Answer:
        response = await self.pacing.udp(gw, natpmp.PORT,
                                         lambda _: natpmp.external_address_request(),
                                         _parser(natpmp.AddressResponse, None), deadline)
        self.heard.add(gw)
        self.check_epoch(gw, response.epoch)
        if not response.ok:
            raise NoAnswer("refused", f"refused: {natpmp.result_text(response.result)}")
        self._addresses[gw] = response.address
        return Answer(self.protocol, gw, "ok", response.address,
                      f"public address {response.address} (router up {response.epoch} s)")

    async def map(self, gw: str, port: int, deadline: float,
                  held: Held | None = None) -> Held | Refusal:
        suggested = held.mapping.external_port if held else port

        def build(_: str) -> bytes:
            self.requested[(gw, port)] = None        # sent: it may map
            return natpmp.map_tcp_request(port, suggested, self.lifetime)

        try:
            response = await self.pacing.udp(gw, natpmp.PORT, build,
                                             self.answer_parser(port, None), deadline)
        except NoAnswer as e:
            return e.refusal
        self.heard.add(gw)
        self.check_epoch(gw, response.epoch)
        if not response.ok:
            self.nothing_mapped(gw, port, None, held)
            return Refusal("refused", f"refused: {natpmp.result_text(response.result)}")
        return Held(Mapping(self.protocol, gw, port, response.external_port,
                            self._addresses.get(gw), response.lifetime),
                    time.monotonic())
