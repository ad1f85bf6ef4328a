"""The UPnP-IGD driver: SSDP search, the device description and
GetExternalIPAddress as the probe; AddPortMapping (AddAnyPortMapping on an
IGD v2 when the port is taken), DeletePortMapping.

Only the gateway counts: a description URL or a control URL elsewhere is
ignored.  A deletion removes the port's mapping whoever made it, so what an
AddPortMapping whose answer never came may have mapped is deleted only if
the router's entry forwards to us (another host's mapping of that port must
stay), and close lets a request in flight finish first
(:meth:`UpnpDriver.awaiting_answer`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Callable

from . import upnp
from .common import MalformedResponse, escape
from .driver import Driver, Held, Removal
from .exchange import CLOSING, NOT_IN_TIME, http_exchange, soap_call, ssdp_search
from .results import Answer, Mapping, NoAnswer, Refusal


@dataclass
class Igd:
    """A UPnP gateway found in discovery."""

    service: upnp.Service
    description: upnp.Description
    server: str
    local_address: str
    public_address: str


def _port_number(text: str) -> int | None:
    """A port number a router wrote, or None (ASCII digits only: int() also
    takes other scripts' digits)."""
    if text.isascii() and text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    return None


def _no_such_entry(result: upnp.SoapResult) -> bool:
    return result.fault is not None and result.fault.code == upnp.NO_SUCH_ENTRY


class UpnpDriver(Driver):
    protocol = "upnp"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.igds: dict[str, Igd] = {}
        self._inflight: set[tuple[str, int]] = set()
        # AddPortMapping sent, answer unknown: (gw, internal port) -> external port
        self._uncertain: dict[tuple[str, int], int] = {}

    async def probe(self, gw: str, deadline: float) -> Answer:
        found = await ssdp_search(gw, deadline)
        host, port, _ = upnp.split_http_url(found.location)
        response, local = await http_exchange(host, port, upnp.http_get(found.location),
                                              upnp.MAX_DESCRIPTION, deadline)
        if response.status != 200:
            raise NoAnswer("garbage", f"description at {escape(found.location)}: "
                           f"HTTP {response.status}")
        try:
            description = upnp.parse_description(response.body, found.location)
        except MalformedResponse as e:
            raise NoAnswer("garbage", f"unusable description ({escape(e)})") from None
        services = [s for s in description.services
                    if upnp.split_http_url(s.control_url)[0] == gw]
        if not services:
            raise NoAnswer("garbage", "the description's control URLs are not on the gateway")
        last = None
        for service in services:
            result, local = await soap_call(service, upnp.get_external_ip_request(service),
                                            "GetExternalIPAddress", deadline)
            if not result.ok:
                last = f"GetExternalIPAddress: {escape(result.fault)}"
                continue
            address = result.values.get("NewExternalIPAddress", "")
            try:
                address = str(ipaddress.IPv4Address(address))
            except ValueError:
                last = f"GetExternalIPAddress gave {escape(address)!s}, not an IPv4 address"
                continue
            self.igds[gw] = Igd(service, description, found.server, local, address)
            who = escape(description.friendly_name or found.server or "an IGD", 60)
            kind = service.service_type.split(":", 3)[-1]
            return Answer(self.protocol, gw, "ok", address,
                          f"{who} ({escape(kind)}), public address {address}")
        raise NoAnswer("refused", last or "no usable service")

    async def map(self, gw: str, port: int, deadline: float,
                  held: Held | None = None) -> Held | Refusal:
        igd = self.igds[gw]
        service = igd.service
        external = held.mapping.external_port if held else port
        lease = held.mapping.lifetime if held else self.lifetime
        window = self.pacing.window(gw)
        if not await window.acquire(deadline):
            return Refusal("silent", NOT_IN_TIME)
        asked: int | None = None     # the external port of an AddPortMapping not answered yet
        self._inflight.add((gw, port))
        try:
            if self.pacing.stopping:
                return Refusal("silent", CLOSING)

            async def add(lease: int) -> upnp.SoapResult:
                nonlocal asked
                asked = external
                result, _ = await soap_call(service, upnp.add_port_mapping_request(
                    service, port, igd.local_address, lease, external), "AddPortMapping", deadline)
                asked = None
                return result

            result = await add(lease)
            if result.fault and result.fault.code == upnp.ONLY_PERMANENT and lease:
                lease = 0
                result = await add(0)
            if result.ok:
                return self._held(gw, port, external, lease)
            if (result.fault.code in (upnp.CONFLICT, upnp.CONFLICT_OTHER) and service.version >= 2
                    and held is None):
                return await self._map_any(gw, port, lease or self.lifetime, result.fault,
                                           deadline)
            return Refusal("refused", escape(result.fault))
        except NoAnswer as e:
            if asked is not None and e.refusal.outcome != "closed":
                self._uncertain[(gw, port)] = asked     # it may have mapped
            return e.refusal
        except asyncio.CancelledError:
            if asked is not None:
                self._uncertain[(gw, port)] = asked
            raise
        finally:
            self._inflight.discard((gw, port))
            window.release()

    async def _map_any(self, gw: str, port: int, lease: int, fault: upnp.SoapFault,
                       deadline: float) -> Held | Refusal:
        """The port is taken: an IGD v2 reserves another external port."""
        igd = self.igds[gw]
        result, _ = await soap_call(igd.service, upnp.add_any_port_mapping_request(
            igd.service, port, igd.local_address, lease), "AddAnyPortMapping", deadline)
        reserved = result.values.get("NewReservedPort", "")
        if result.ok and _port_number(reserved) is not None:
            return self._held(gw, port, _port_number(reserved), lease)
        if not result.ok:
            return Refusal("refused", f"{escape(fault)}; AddAnyPortMapping: "
                                      f"{escape(result.fault)}")
        return Refusal("garbage", f"AddAnyPortMapping gave no usable port ({escape(reserved)})")

    def _held(self, gw: str, port: int, external: int, lease: int) -> Held:
        igd = self.igds[gw]
        return Held(Mapping(self.protocol, gw, port, external, igd.public_address, lease),
                    time.monotonic(), local_address=igd.local_address)

    async def delete(self, held: Held, deadline: float) -> bool:
        return await self._delete(held.mapping.gateway, held.mapping.external_port, deadline)

    async def _call(self, gw: str, request: Callable[[upnp.Service], bytes], action: str,
                    deadline: float) -> upnp.SoapResult | None:
        """One SOAP call to the gateway's IGD through its window; None
        without an IGD or an answer."""
        igd = self.igds.get(gw)
        if igd is None:
            return None
        try:
            return await self.pacing.soap(gw, igd.service, request(igd.service), action, deadline)
        except NoAnswer:
            return None

    async def _delete(self, gw: str, external: int, deadline: float) -> bool:
        result = await self._call(gw, lambda s: upnp.delete_port_mapping_request(s, external),
                                  "DeletePortMapping", deadline)
        return result is not None and (result.ok or _no_such_entry(result))

    async def _delete_if_ours(self, gw: str, port: int, external: int, deadline: float) -> bool:
        """Delete what an unanswered AddPortMapping may have made: only if the
        router's entry for *external* forwards to us, port *port*."""
        result = await self._call(
            gw, lambda s: upnp.get_specific_port_mapping_entry_request(s, external),
            "GetSpecificPortMappingEntry", deadline)
        if result is None:
            return False
        if not result.ok:
            return _no_such_entry(result)
        if (result.values.get("NewInternalClient") != self.igds[gw].local_address
                or result.values.get("NewInternalPort") != str(port)):
            return True
        return await self._delete(gw, external, deadline)

    def wants(self, gw: str, port: int) -> bool:
        return (gw, port) in self._inflight or (gw, port) in self._uncertain

    def awaiting_answer(self) -> bool:
        return bool(self._inflight)

    def remove_unanswered(self, skip: Callable[[str, int], bool],
                          deadline: float) -> list[Removal]:
        removals = [(port, self._delete_if_ours(gw, port, external, deadline))
                    for (gw, port), external in list(self._uncertain.items())
                    if not skip(gw, port)]
        self._uncertain.clear()
        return removals
