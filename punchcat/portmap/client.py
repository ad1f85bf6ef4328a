"""Ask the default gateway to map TCP ports, over PCP, NAT-PMP and UPnP-IGD.

Why a background thread: the punch is a ``selectors`` loop with its own
tight schedule (sentinels every 0.8 s, probes every 0.5 s).  UPnP alone is
a chain of SSDP, an HTTP GET and one SOAP POST per port, and renewals come
every minute; threading all of that through the punch's loop would couple
two schedules that have nothing to say to each other.  So
:class:`PortMapper` runs an asyncio loop of its own in one daemon thread:
:meth:`PortMapper.start` returns at once, :meth:`PortMapper.status` returns
an immutable snapshot at any time without blocking, ``on_update`` (optional)
is called from the mapper's thread whenever the snapshot changes, and
:meth:`PortMapper.close` removes every mapping it made within a bounded time.
The punch never waits on it.  The coroutines underneath (:class:`Engine`)
can be driven by any asyncio loop directly.

Every network wait is bounded: discovery by ``discovery_timeout`` (0.5 s by
default), each mapping request by ``request_timeout``, removal by
``close(timeout)``.  Only the default gateway(s) from /proc/net/route are
asked; SSDP answers and description URLs that point elsewhere are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from . import natpmp, pcp, upnp
from .common import MalformedResponse, classify_ipv4, escape
from .local import default_gateways, global_ipv6_addresses

PROTOCOLS = ("pcp", "natpmp", "upnp")
NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP"}
#: First retransmission of a UDP request (RFC 6886 says 250 ms; RFC 6887's 3 s
#: would never retransmit within a sub-second discovery), doubled each time.
RETRY = 0.25
MAX_GATEWAYS = 3
#: Once a protocol has answered, how long a better one still pending is waited for.
GRACE = 0.1
UPNP_PARALLEL = 4


# -- results -----------------------------------------------------------------

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
    outcome: str                 # "pending", "ok", "refused", "silent", "closed", "garbage", "error"
    public_address: str | None = None
    text: str = ""               # human, router text already escaped

    def line(self) -> str:
        return f"{NAMES[self.protocol]}: gateway {self.gateway}: {self.text}"


@dataclass(frozen=True)
class PortmapStatus:
    """A snapshot of a :class:`PortMapper` (or of a what-is-my-address query)."""

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


# -- small network helpers ---------------------------------------------------

class _NoAnswer(Exception):
    """A request got no usable answer; ``outcome`` says how."""

    def __init__(self, outcome: str, text: str):
        super().__init__(text)
        self.outcome = outcome
        self.text = text


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        if self.queue.qsize() < 64:
            self.queue.put_nowait((data, addr))

    def error_received(self, exc) -> None:
        if self.queue.qsize() < 64:
            self.queue.put_nowait((exc, None))


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


async def udp_exchange(gateway: str, port: int, build: Callable[[str], bytes],
                       parse: Callable[[bytes], object], deadline: float) -> object:
    """Send ``build(our address)`` to *gateway*:*port*, retransmitting after
    0.25 s, 0.5 s, …, until ``parse`` accepts an answer from it or
    *deadline* (monotonic) passes.  Datagrams that do not parse are skipped
    (and reported if nothing better comes)."""
    loop = asyncio.get_running_loop()
    if _remaining(deadline) <= 0:
        raise _NoAnswer("silent", "no time left to ask")
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _Datagrams, remote_addr=(gateway, port))
    except OSError as e:
        raise _NoAnswer("error", f"cannot send: {e.strerror or e}") from None
    try:
        local = transport.get_extra_info("sockname")[0]
        payload = build(local)
        garbage: str | None = None
        interval = RETRY
        transport.sendto(payload)
        next_send = time.monotonic() + interval
        while True:
            wait = min(next_send, deadline) - time.monotonic()
            if wait <= 0:
                if time.monotonic() >= deadline:
                    break
                interval *= 2
                transport.sendto(payload)
                next_send = time.monotonic() + interval
                continue
            try:
                data, _ = await asyncio.wait_for(proto.queue.get(), wait)
            except asyncio.TimeoutError:
                continue
            if isinstance(data, ConnectionRefusedError):
                raise _NoAnswer("closed", f"port {port} closed (ICMP port unreachable)")
            if isinstance(data, OSError):
                raise _NoAnswer("error", f"network error: {data.strerror or data}")
            try:
                return parse(data)
            except MalformedResponse as e:
                garbage = escape(e)
        if garbage is not None:
            raise _NoAnswer("garbage", f"unusable answer ({garbage})")
        raise _NoAnswer("silent", "no answer")
    finally:
        transport.close()


async def http_exchange(host: str, port: int, request: bytes, limit: int,
                        deadline: float) -> tuple[upnp.HttpResponse, str]:
    """One HTTP request on a fresh connection: (response, our address)."""
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    max(_remaining(deadline), 0.001))
            local = writer.get_extra_info("sockname")[0]
            writer.write(request)
            buffer = b""
            while True:
                chunk = await asyncio.wait_for(reader.read(16384),
                                               max(_remaining(deadline), 0.001))
                buffer += chunk
                response = upnp.parse_http_response(buffer, not chunk, limit)
                if response is not None:
                    return response, local
        except asyncio.TimeoutError:
            raise _NoAnswer("silent", f"no HTTP answer from {host}:{port} in time") from None
        except ConnectionRefusedError:
            raise _NoAnswer("closed", f"HTTP port {port} closed") from None
        except MalformedResponse as e:
            raise _NoAnswer("garbage", f"unusable HTTP answer ({escape(e)})") from None
        except OSError as e:
            raise _NoAnswer("error", f"HTTP: {escape(e.strerror or e)}") from None
    finally:
        if writer is not None:
            writer.transport.abort()


async def ssdp_search(gateway: str, deadline: float) -> upnp.SsdpResponse:
    """Search for an IGD: unicast M-SEARCHes to the gateway (answered at
    once by UPnP 1.1 devices) and multicast ones (MX 1); only answers from
    the gateway whose LOCATION is on the gateway count."""
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _Datagrams, local_addr=("0.0.0.0", 0), family=socket.AF_INET)
    except OSError as e:
        raise _NoAnswer("error", f"cannot send: {e.strerror or e}") from None
    try:
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        except OSError:
            pass
        datagrams = [(upnp.msearch(t, None, f"{gateway}:{upnp.SSDP_PORT}"),
                      (gateway, upnp.SSDP_PORT)) for t in upnp.SEARCH_TARGETS]
        datagrams += [(upnp.msearch(t, 1), (upnp.SSDP_GROUP, upnp.SSDP_PORT))
                      for t in (upnp.IGD1, upnp.IGD2)]

        def send_all() -> None:
            for data, addr in datagrams:
                try:
                    transport.sendto(data, addr)
                except OSError:
                    pass
        send_all()
        next_send = time.monotonic() + RETRY
        garbage = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_send:
                send_all()
                next_send = float("inf")
            try:
                data, addr = await asyncio.wait_for(proto.queue.get(),
                                                    min(next_send, deadline) - now)
            except asyncio.TimeoutError:
                continue
            if isinstance(data, Exception) or addr is None or addr[0] != gateway:
                continue
            try:
                found = upnp.parse_ssdp_response(data)
                host, _, _ = upnp.split_http_url(found.location)
            except MalformedResponse as e:
                garbage = escape(e)
                continue
            if host != gateway:
                garbage = f"LOCATION {escape(found.location)} is not on the gateway"
                continue
            return found
        if garbage:
            raise _NoAnswer("garbage", f"unusable SSDP answer ({garbage})")
        raise _NoAnswer("silent", "no answer to SSDP M-SEARCH")
    finally:
        transport.close()


@dataclass
class _Igd:
    """A UPnP gateway found in discovery."""

    service: upnp.Service
    description: upnp.Description
    server: str
    local_address: str


async def soap_call(service: upnp.Service, request: bytes, action: str,
                    deadline: float) -> tuple[upnp.SoapResult, str]:
    host, port, _ = upnp.split_http_url(service.control_url)
    response, local = await http_exchange(host, port, request, upnp.MAX_SOAP, deadline)
    try:
        return upnp.parse_soap_response(response, action), local
    except MalformedResponse as e:
        raise _NoAnswer("garbage", f"unusable {action} answer ({escape(e)})") from None


# -- the engine --------------------------------------------------------------

@dataclass
class _Held:
    """A mapping we hold, with what renewing and removing it needs."""

    mapping: Mapping
    granted_at: float
    nonce: bytes | None = None           # PCP
    local_address: str | None = None     # PCP client address, UPnP internal client


class Engine:
    """The asyncio side: discovery, mapping, renewal and removal.

    Drive it with :meth:`run` (discovery, mapping, then renewal until
    cancelled) and :meth:`remove_all` (bounded removal); :class:`PortMapper`
    does both in a thread.  :meth:`snapshot` is safe from any thread.
    """

    def __init__(self, ports: Iterable[int] = (), *, lifetime: int = 120,
                 discovery_timeout: float = 0.5, request_timeout: float = 1.0,
                 protocols: Iterable[str] = PROTOCOLS, gateways: Iterable[str] | None = None,
                 renew: bool = True, on_update: Callable[[PortmapStatus], None] | None = None):
        self.ports = list(dict.fromkeys(int(p) for p in ports))
        for port in self.ports:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")
        self.lifetime = int(lifetime)
        if not 0 < self.lifetime < 2**31:
            raise ValueError("lifetime must be positive")
        self.discovery_timeout = discovery_timeout
        self.request_timeout = request_timeout
        self.protocols = tuple(p for p in PROTOCOLS if p in set(protocols))
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError(f"unknown protocol {sorted(unknown)}")
        self._given_gateways = list(gateways) if gateways is not None else None
        self.renew = renew
        self.on_update = on_update
        self._lock = threading.RLock()   # re-entrant: a signal handler may call in
        self._gateways: list[str] = []
        self._answers: dict[tuple[str, str], Answer] = {}
        self._held: dict[int, _Held] = {}
        self._failures: dict[int, str] = {}
        self._notes: list[str] = []
        self._warnings: list[str] = []
        self._chosen: tuple[str, str] | None = None
        self._finished = False
        self._igd: dict[str, _Igd] = {}
        self._natpmp_epoch: dict[str, tuple[int, float]] = {}
        self._pcp_epoch: dict[str, tuple[int, float]] = {}
        self._pcp_probe: dict[str, tuple[int, bytes, str]] = {}   # gw -> (port, nonce, local)
        self._requested: dict[tuple[str, str, int], bytes | None] = {}   # (proto, gw, port) -> nonce
        self._upnp_inflight: set[tuple[str, int]] = set()
        self._probe_held: dict[str, _Held] = {}
        self._changed: asyncio.Event | None = None
        self._throwaway: socket.socket | None = None
        self.stopping = False        # set when closing: start no new mapping requests

    # -- snapshot ------------------------------------------------------------
    def snapshot(self) -> PortmapStatus:
        with self._lock:
            chosen = self._chosen
            answers = tuple(self._answers[k] for k in sorted(
                self._answers, key=lambda k: (self._gw_rank(k[1]), PROTOCOLS.index(k[0]))))
            public = self._public_address_locked()
            return PortmapStatus(
                finished=self._finished, gateways=tuple(self._gateways),
                protocol=chosen[0] if chosen else None, gateway=chosen[1] if chosen else None,
                public_address=public,
                mappings=tuple(h.mapping for _, h in sorted(self._held.items())),
                failures=tuple(sorted(self._failures.items())), answers=answers,
                warnings=tuple(self._warnings), notes=tuple(self._notes))

    def _gw_rank(self, gateway: str) -> int:
        return self._gateways.index(gateway) if gateway in self._gateways else 99

    def _public_address_locked(self) -> str | None:
        order = sorted(self._answers.values(), key=lambda a: (
            0 if self._chosen and (a.protocol, a.gateway) == self._chosen else 1,
            self._gw_rank(a.gateway), PROTOCOLS.index(a.protocol)))
        for answer in order:
            if answer.public_address:
                return answer.public_address
        return None

    def _update(self) -> None:
        if self._changed is not None:
            self._changed.set()
        if self.on_update is not None:
            try:
                self.on_update(self.snapshot())
            except Exception:           # a callback's bug must not stop the mapper
                pass

    def _note(self, text: str) -> None:
        with self._lock:
            self._notes.append(text)
        self._update()

    def _answer(self, answer: Answer) -> None:
        with self._lock:
            self._answers[(answer.protocol, answer.gateway)] = answer
        if answer.public_address:
            self._warn_about_addresses(final=False)
        else:
            self._update()

    # -- discovery -----------------------------------------------------------
    async def run(self, map_ports: bool = True) -> None:
        """Discover, choose a protocol, map the ports, then keep them renewed
        (until cancelled; returns after discovery when *map_ports* is false)."""
        self._changed = asyncio.Event()
        gateways = (self._given_gateways if self._given_gateways is not None
                    else default_gateways())[:MAX_GATEWAYS]
        with self._lock:
            self._gateways = list(gateways)
        if not gateways:
            with self._lock:
                self._warnings.append("no IPv4 default route: there is no router to ask")
                self._finished = True
            self._update()
            return
        if not self.protocols:
            with self._lock:
                self._finished = True
            self._update()
            return
        deadline = time.monotonic() + self.discovery_timeout
        probes = []
        for gw in gateways:
            for protocol in self.protocols:
                self._answer(Answer(protocol, gw, "pending", text="asking"))
                probe = {"pcp": self._probe_pcp, "natpmp": self._probe_natpmp,
                         "upnp": self._probe_upnp}[protocol]
                probes.append(asyncio.ensure_future(self._guard(protocol, gw, probe(gw, deadline))))
        try:
            if map_ports:
                chosen = await self._choose(deadline)
                with self._lock:
                    self._chosen = chosen
                    if chosen is None and not self._failures:
                        for port in self.ports:
                            self._failures[port] = "no router offered to map it"
                self._update()
                if chosen is not None:
                    await self._map_all(*chosen)
                else:               # the deadline has passed: every probe is over
                    await asyncio.gather(*probes, return_exceptions=True)
                    self._warn_about_addresses()
                with self._lock:
                    self._finished = True      # what the punch waits for (lower-
                self._update()                 # priority answers may still come)
            # Probes end by the discovery deadline; a PCP probe that mapped a
            # port we do not keep is removed once it is over.
            await asyncio.gather(*probes, return_exceptions=True)
            self._warn_about_addresses()
            await self._drop_unused_pcp_probes()
        finally:
            for task in probes:
                task.cancel()
            with self._lock:
                self._finished = True
            self._update()
        if map_ports and self.renew and self._held:
            await self._renew_loop()

    async def _guard(self, protocol: str, gateway: str, probe) -> None:
        try:
            await probe
        except _NoAnswer as e:
            self._answer(Answer(protocol, gateway, e.outcome, text=e.text))
        except asyncio.CancelledError:
            self._answer(Answer(protocol, gateway, "silent", text="stopped before an answer"))
            raise
        except Exception as e:          # a bug, reported rather than lost
            self._answer(Answer(protocol, gateway, "error", text=f"failed: {escape(repr(e))}"))
        else:
            return
        if self._answers[(protocol, gateway)].outcome == "silent":
            self._answer(Answer(protocol, gateway, "silent",
                                text=f"no answer within {self.discovery_timeout:g} s"))

    async def _choose(self, deadline: float) -> tuple[str, str] | None:
        """The best gateway and protocol that answered: gateways in route
        order, then PCP, NAT-PMP, UPnP.  A better one still pending is waited
        for, until the deadline or, once a worse one has answered, for GRACE
        seconds more (a router that ignores PCP must not cost the whole
        deadline)."""
        settle = deadline
        while True:
            final = time.monotonic() >= settle
            best = None
            waiting = False
            with self._lock:
                for gw in self._gateways:
                    for protocol in self.protocols:
                        answer = self._answers[(protocol, gw)]
                        if answer.outcome == "ok":
                            best = best or (protocol, gw)
                            if not waiting:
                                return best
                        elif answer.outcome == "pending" and not final:
                            waiting = True
            if not waiting:
                return best
            if best and settle == deadline:
                settle = min(deadline, time.monotonic() + GRACE)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(_remaining(settle), 0.001))
            except asyncio.TimeoutError:
                pass

    async def _probe_pcp(self, gw: str, deadline: float) -> None:
        if self.ports:
            port = self.ports[0]
        else:
            # What-is-my-address: PCP has no address query, so map a port we
            # hold ourselves for a moment (removed right after).
            self._throwaway = socket.socket()
            self._throwaway.bind(("0.0.0.0", 0))
            port = self._throwaway.getsockname()[1]
        result = await self._pcp_map(gw, port, self.lifetime, deadline, probe=True)
        if isinstance(result, str):
            raise _NoAnswer(*result.split("\0", 1))

    async def _pcp_map(self, gw: str, port: int, lifetime: int, deadline: float,
                       probe: bool = False, held: _Held | None = None) -> _Held | str:
        """One PCP MAP (a renewal when *held*): the mapping, or "outcome\\0why"."""
        nonce = held.nonce if held else os.urandom(12)
        suggested = held.mapping.external_port if held else port
        local_box: list[str] = []

        def build(local: str) -> bytes:
            local_box.append(local)
            return pcp.map_request(local, port, nonce, lifetime, suggested)

        self._requested[("pcp", gw, port)] = nonce
        if probe:
            self._pcp_probe[gw] = (port, nonce, "")
        try:
            response = await udp_exchange(gw, pcp.PORT, build,
                                          lambda d: pcp.parse_map_response(d, nonce, port), deadline)
        except _NoAnswer as e:
            return f"{e.outcome}\0{e.text}"
        if probe:
            self._pcp_probe[gw] = (port, nonce, local_box[0])
        self._check_epoch("pcp", gw, response.epoch)
        if response.version == 0:
            return "refused\0the router speaks NAT-PMP only (PCP: unsupported version)"
        if not response.ok:
            return f"refused\0refused: {pcp.result_text(response.result)}"
        mapping = Mapping("pcp", gw, port, response.external_port, response.external_address,
                          response.lifetime)
        held = _Held(mapping, time.monotonic(), nonce, local_box[0])
        if probe:
            address = response.external_address
            text = f"public address {address}" if self.ports else f"public address {address} (from a throwaway mapping, removed)"
            self._answer(Answer("pcp", gw, "ok", address, text))
            if self.ports:
                self._probe_held[gw] = held
        return held

    async def _probe_natpmp(self, gw: str, deadline: float) -> None:
        response = await udp_exchange(gw, natpmp.PORT, lambda _: natpmp.external_address_request(),
                                      _natpmp_parser(natpmp.AddressResponse, None), deadline)
        self._check_epoch("natpmp", gw, response.epoch)
        if not response.ok:
            raise _NoAnswer("refused", f"refused: {natpmp.result_text(response.result)}")
        self._answer(Answer("natpmp", gw, "ok", response.address,
                            f"public address {response.address} (router up {response.epoch} s)"))

    async def _probe_upnp(self, gw: str, deadline: float) -> None:
        found = await ssdp_search(gw, deadline)
        host, port, _ = upnp.split_http_url(found.location)
        response, local = await http_exchange(host, port, upnp.http_get(found.location),
                                              upnp.MAX_DESCRIPTION, deadline)
        if response.status != 200:
            raise _NoAnswer("garbage", f"description at {escape(found.location)}: "
                            f"HTTP {response.status}")
        try:
            description = upnp.parse_description(response.body, found.location)
        except MalformedResponse as e:
            raise _NoAnswer("garbage", f"unusable description ({escape(e)})") from None
        services = [s for s in description.services
                    if upnp.split_http_url(s.control_url)[0] == gw]
        if not services:
            raise _NoAnswer("garbage", "the description's control URLs are not on the gateway")
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
            self._igd[gw] = _Igd(service, description, found.server, local)
            who = escape(description.friendly_name or found.server or "an IGD", 60)
            kind = service.service_type.split(":", 3)[-1]
            self._answer(Answer("upnp", gw, "ok", address,
                                f"{who} ({escape(kind)}), public address {address}"))
            return
        raise _NoAnswer("refused", last or "no usable service")

    def _check_epoch(self, protocol: str, gw: str, epoch: int) -> bool:
        """Record the epoch; True (and a note) when the router lost its state."""
        table = self._pcp_epoch if protocol == "pcp" else self._natpmp_epoch
        check = pcp.epoch_lost_state if protocol == "pcp" else natpmp.epoch_lost_state
        now = time.monotonic()
        previous = table.get(gw)
        table[gw] = (epoch, now)
        if previous is not None and check(previous[0], previous[1], epoch, now):
            self._note(f"{NAMES[protocol]}: gateway {gw} restarted (epoch {epoch}): mapping again")
            return True
        return False

    # -- mapping -------------------------------------------------------------
    async def _map_all(self, protocol: str, gw: str) -> None:
        deadline = time.monotonic() + self.request_timeout
        semaphore = asyncio.Semaphore(UPNP_PARALLEL if protocol == "upnp" else 64)

        async def one(port: int) -> None:
            async with semaphore:
                result = await self._map_one(protocol, gw, port, deadline)
            self._record(protocol, gw, port, result)

        await asyncio.gather(*(one(p) for p in self.ports), return_exceptions=True)
        self._summarise(protocol, gw)

    async def _map_one(self, protocol: str, gw: str, port: int, deadline: float,
                       held: _Held | None = None) -> _Held | str:
        if self.stopping:
            return "closed before it was asked for"
        if protocol == "pcp":
            probe = self._probe_held.get(gw)
            if held is None and probe is not None and probe.mapping.internal_port == port:
                return probe
            result = await self._pcp_map(gw, port, self.lifetime, deadline, held=held)
            return result if isinstance(result, _Held) else result.split("\0", 1)[1]
        if protocol == "natpmp":
            return await self._natpmp_map(gw, port, deadline, held)
        return await self._upnp_map(gw, port, deadline, held)

    async def _natpmp_map(self, gw: str, port: int, deadline: float,
                          held: _Held | None) -> _Held | str:
        suggested = held.mapping.external_port if held else port
        self._requested[("natpmp", gw, port)] = None
        try:
            response = await udp_exchange(
                gw, natpmp.PORT, lambda _: natpmp.map_tcp_request(port, suggested, self.lifetime),
                _natpmp_parser(natpmp.MapResponse, port), deadline)
        except _NoAnswer as e:
            return e.text
        self._check_epoch("natpmp", gw, response.epoch)
        if not response.ok:
            return f"refused: {natpmp.result_text(response.result)}"
        address = self._answers.get(("natpmp", gw))
        return _Held(Mapping("natpmp", gw, port, response.external_port,
                             address.public_address if address else None, response.lifetime),
                     time.monotonic())

    async def _upnp_map(self, gw: str, port: int, deadline: float,
                        held: _Held | None) -> _Held | str:
        igd = self._igd[gw]
        service = igd.service
        external = held.mapping.external_port if held else port
        lease = held.mapping.lifetime if held else self.lifetime
        address = self._answers[("upnp", gw)].public_address
        self._upnp_inflight.add((gw, port))
        try:
            result, _ = await soap_call(service, upnp.add_port_mapping_request(
                service, port, igd.local_address, lease, external), "AddPortMapping", deadline)
            if result.fault and result.fault.code == upnp.ONLY_PERMANENT and lease:
                lease = 0
                result, _ = await soap_call(service, upnp.add_port_mapping_request(
                    service, port, igd.local_address, 0, external), "AddPortMapping", deadline)
            if result.ok:
                return _Held(Mapping("upnp", gw, port, external, address, lease),
                             time.monotonic(), local_address=igd.local_address)
            if (result.fault.code in (upnp.CONFLICT, upnp.CONFLICT_OTHER) and service.version >= 2
                    and held is None):
                any_result, _ = await soap_call(service, upnp.add_any_port_mapping_request(
                    service, port, igd.local_address, lease or self.lifetime),
                    "AddAnyPortMapping", deadline)
                reserved = any_result.values.get("NewReservedPort", "")
                if any_result.ok and reserved.isdigit() and 0 < int(reserved) < 65536:
                    return _Held(Mapping("upnp", gw, port, int(reserved), address,
                                         lease or self.lifetime),
                                 time.monotonic(), local_address=igd.local_address)
                if not any_result.ok:
                    return (f"{escape(result.fault)}; AddAnyPortMapping: "
                            f"{escape(any_result.fault)}")
                return f"AddAnyPortMapping gave no usable port ({escape(reserved)})"
            return escape(result.fault)
        except _NoAnswer as e:
            return e.text
        finally:
            self._upnp_inflight.discard((gw, port))

    def _record(self, protocol: str, gw: str, port: int, result: _Held | str) -> None:
        with self._lock:
            if isinstance(result, _Held):
                self._held[port] = result
                self._failures.pop(port, None)
            else:
                self._failures[port] = result
        self._update()

    def _summarise(self, protocol: str, gw: str) -> None:
        name = NAMES[protocol]
        with self._lock:
            held = [h.mapping for h in self._held.values() if h.mapping.protocol == protocol]
            failures = dict(self._failures)
        same = sorted(m.internal_port for m in held if m.external_port == m.internal_port)
        with self._lock:
            address = self._public_address_locked()
        lifetimes = sorted({m.lifetime for m in held})
        lines = []
        if same:
            life = ("permanently (the router accepts no lease; removed on close)"
                    if lifetimes == [0] else f"for {'/'.join(map(str, lifetimes))} s")
            lines.append(f"{name}: gateway {gw} maps TCP {_ports(same)} {life}"
                         + (f"; public address {address}" if address else ""))
        for m in sorted(held, key=lambda m: m.internal_port):
            if m.external_port != m.internal_port:
                lines.append(f"{name}: gateway {gw} maps TCP {m.internal_port} to another "
                             f"external port, {m.external_port}, for {m.lifetime} s")
        for port, why in sorted(failures.items()):
            lines.append(f"{name}: gateway {gw} did not map TCP {port}: {why}")
        with self._lock:
            self._notes.extend(lines)
        self._update()

    def _warn_about_addresses(self, final: bool = True) -> None:
        """Warnings about the public address(es) reported so far; when
        *final* (discovery over), also about no answer at all."""
        with self._lock:
            answers = [a for a in self._answers.values() if a.public_address]
            warnings = []
            spoke = [a for a in self._answers.values() if a.outcome in ("ok", "refused", "garbage")]
            if final and self._gateways and self.protocols and not answers:
                if spoke:
                    warnings.append("no router reported its public address "
                                    f"(asked {', '.join(self._gateways)})")
                else:
                    warnings.append(f"no router answered {_names(self.protocols)} within "
                                    f"{self.discovery_timeout:g} s (asked {', '.join(self._gateways)})")
            seen = {}
            for a in answers:
                seen.setdefault(a.public_address, []).append(NAMES[a.protocol])
            for address, who in seen.items():
                kind = classify_ipv4(address)
                if kind == "private":
                    warnings.append(f"the router's WAN address {address} ({', '.join(who)}) is "
                                    "private (RFC 1918): there is another NAT beyond it")
                elif kind == "shared":
                    warnings.append(f"the router's WAN address {address} ({', '.join(who)}) is "
                                    "in the shared address space 100.64.0.0/10: carrier-grade "
                                    "NAT beyond it")
                elif kind != "public":
                    warnings.append(f"the router reports {address} ({', '.join(who)}) as its "
                                    "WAN address, which is not a public address")
            if len(seen) > 1:
                warnings.append("the protocols disagree on the public address: "
                                + "; ".join(f"{', '.join(w)}: {a}" for a, w in seen.items()))
            self._warnings.extend(w for w in warnings if w not in self._warnings)
        self._update()

    # -- renewal -------------------------------------------------------------
    async def _renew_loop(self) -> None:
        failures: dict[int, int] = {}
        while True:
            now = time.monotonic()
            with self._lock:
                due = {}
                for port, held in self._held.items():
                    if held.mapping.lifetime == 0:
                        continue
                    half = held.mapping.lifetime / 2
                    retry = min(half, 5.0 * 2 ** failures.get(port, 0)) if failures.get(port) else half
                    due[port] = held.granted_at + retry
            if not due:
                return
            wake = min(due.values())
            if wake > now:
                await asyncio.sleep(min(wake - now, 3600))
                continue
            for port in [p for p, t in due.items() if t <= now]:
                held = self._held.get(port)
                if held is None:
                    continue
                m = held.mapping
                deadline = time.monotonic() + self.request_timeout
                result = await self._map_one(m.protocol, m.gateway, port, deadline, held)
                if isinstance(result, _Held):
                    failures.pop(port, None)
                    if result.mapping.external_port != m.external_port:
                        self._note(f"{NAMES[m.protocol]}: renewal moved TCP {port} to external "
                                   f"port {result.mapping.external_port}")
                    with self._lock:
                        self._held[port] = result
                    self._update()
                else:
                    failures[port] = failures.get(port, 0) + 1
                    expired = time.monotonic() > held.granted_at + m.lifetime
                    self._note(f"{NAMES[m.protocol]}: renewing TCP {port} failed: {result}"
                               + ("; the mapping has expired" if expired else ""))
                    if expired:
                        with self._lock:
                            self._held.pop(port, None)
                            self._failures[port] = f"expired: {result}"
                        self._update()

    # -- removal -------------------------------------------------------------
    def upnp_inflight(self) -> bool:
        """Whether a UPnP mapping request is waiting for its answer."""
        return bool(self._upnp_inflight)

    async def _drop_unused_pcp_probes(self) -> None:
        """Remove PCP probe mappings not kept as real mappings."""
        tasks = []
        for gw, (port, nonce, local) in list(self._pcp_probe.items()):
            held = self._held.get(port)
            if held is not None and held.nonce == nonce:
                continue
            del self._pcp_probe[gw]
            self._requested.pop(("pcp", gw, port), None)
            # Only a probe that was answered made a mapping (an answer lost
            # on the way leaves one that expires with its lifetime).
            if local:
                tasks.append(self._pcp_delete(gw, port, nonce, time.monotonic() + 0.3))
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._throwaway is not None:
            self._throwaway.close()
            self._throwaway = None

    async def _pcp_delete(self, gw: str, port: int, nonce: bytes, deadline: float) -> bool:
        try:
            response = await udp_exchange(
                gw, pcp.PORT, lambda local: pcp.map_request(local, port, nonce, 0, 0),
                lambda d: pcp.parse_map_response(d, nonce, port), deadline)
        except _NoAnswer:
            return False
        return response.ok or response.result == 8      # NO_RESOURCES: nothing was there

    async def _natpmp_delete(self, gw: str, port: int, deadline: float) -> bool:
        try:
            response = await udp_exchange(
                gw, natpmp.PORT, lambda _: natpmp.map_tcp_request(port, 0, 0),
                _natpmp_parser(natpmp.MapResponse, port), deadline)
        except _NoAnswer:
            return False
        return response.ok

    async def _upnp_delete(self, gw: str, external: int, deadline: float) -> bool:
        igd = self._igd.get(gw)
        if igd is None:
            return False
        try:
            result, _ = await soap_call(igd.service,
                                        upnp.delete_port_mapping_request(igd.service, external),
                                        "DeletePortMapping", deadline)
        except _NoAnswer:
            return False
        return result.ok or (result.fault is not None and result.fault.code == 714)

    async def remove_all(self, timeout: float = 1.0) -> None:
        """Remove every mapping made or requested (idempotent, bounded by
        *timeout*): held ones, and PCP/NAT-PMP requests whose answer never
        came (deleting those is harmless: they are bound to our address and
        port, or nonce).  UPnP requests still in flight are given part of
        the time to finish, then deleted if they succeeded."""
        deadline = time.monotonic() + timeout
        self.stopping = True
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        tasks, what = [], []
        done_keys = set()
        for h in held:
            m = h.mapping
            done_keys.add((m.protocol, m.gateway, m.internal_port))
            if m.protocol == "pcp":
                tasks.append(self._pcp_delete(m.gateway, m.internal_port, h.nonce, deadline))
            elif m.protocol == "natpmp":
                tasks.append(self._natpmp_delete(m.gateway, m.internal_port, deadline))
            else:
                tasks.append(self._upnp_delete(m.gateway, m.external_port, deadline))
            what.append(m)
        for (protocol, gw, port), nonce in list(self._requested.items()):
            if (protocol, gw, port) in done_keys:
                continue
            # Asked for but never answered: most likely nothing to remove, so
            # one datagram each, without waiting for (or counting) an answer.
            if protocol == "pcp" and nonce is not None:
                _send_once(gw, pcp.PORT, lambda local, p=port, n=nonce: pcp.map_request(local, p, n, 0, 0))
            elif protocol == "natpmp":
                _send_once(gw, natpmp.PORT, lambda _, p=port: natpmp.map_tcp_request(p, 0, 0))
        self._requested.clear()
        self._pcp_probe.clear()
        if self._throwaway is not None:
            self._throwaway.close()
            self._throwaway = None
        if not tasks:
            return
        results = await asyncio.gather(*tasks, return_exceptions=True)
        confirmed = [m for m, ok in zip(what, results) if ok is True]
        unconfirmed = [m for m, ok in zip(what, results) if ok is not True]
        if confirmed:
            self._note(f"{NAMES[confirmed[0].protocol]}: removed "
                       f"{len(confirmed)} mapping{'s' if len(confirmed) != 1 else ''} "
                       f"(TCP {_ports(sorted(m.internal_port for m in confirmed))})")
        if unconfirmed:
            self._note(f"{NAMES[unconfirmed[0].protocol]}: removal of TCP "
                       f"{_ports(sorted(m.internal_port for m in unconfirmed))} not confirmed "
                       "in time (the router drops them when their lease ends)")


def _send_once(gateway: str, port: int, build: Callable[[str], bytes]) -> None:
    """Send one datagram to *gateway*:*port* and forget it (never blocks)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((gateway, port))
            sock.send(build(sock.getsockname()[0]))
    except OSError:
        pass


def _natpmp_parser(kind: type, port: int | None):
    def parse(data: bytes):
        response = natpmp.parse_response(data)
        if not isinstance(response, kind):
            raise MalformedResponse("a NAT-PMP answer to another request")
        if (port is not None and response.internal_port not in (port, 0)
                or port is not None and response.opcode != natpmp.OP_MAP_TCP):
            raise MalformedResponse("a NAT-PMP answer for another port")
        return response
    return parse


def _ports(ports: list[int]) -> str:
    return ", ".join(map(str, ports))


def _names(protocols: Iterable[str]) -> str:
    names = [NAMES[p] for p in protocols]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# -- the thread wrapper ------------------------------------------------------

class PortMapper:
    """Map TCP *ports* on the home router in a background thread.

    ::

        mapper = PortMapper([31234, 31235]).start()      # returns at once
        ...                                              # punch; peek at mapper.status()
        mapper.close()                                   # in finally: removes the mappings

    External port = internal port where the router allows it
    (:meth:`PortmapStatus.external_port` says what it gave).  Mappings are
    asked for *lifetime* seconds and renewed at half their granted lifetime
    until :meth:`close`.
    """

    def __init__(self, ports: Iterable[int], *, lifetime: int = 120,
                 discovery_timeout: float = 0.5, request_timeout: float = 1.0,
                 protocols: Iterable[str] = PROTOCOLS, gateways: Iterable[str] | None = None,
                 on_update: Callable[[PortmapStatus], None] | None = None):
        self.engine = Engine(ports, lifetime=lifetime, discovery_timeout=discovery_timeout,
                             request_timeout=request_timeout, protocols=protocols,
                             gateways=gateways, on_update=self._updated)
        self._user_update = on_update
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._close_timeout = 1.0
        self._finished = threading.Event()
        self._closed = False
        self._lock = threading.RLock()   # re-entrant: a signal handler may call in

    def _updated(self, status: PortmapStatus) -> None:
        if status.finished:
            self._finished.set()
        if self._user_update is not None:
            self._user_update(status)

    def start(self) -> "PortMapper":
        """Start the background thread (once); returns at once."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._main, name="punchcat-portmap",
                                                daemon=True)
                self._thread.start()
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._lifecycle())
        finally:
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()
                self._finished.set()

    async def _lifecycle(self) -> None:
        self._stop = asyncio.Event()
        if self._closed:            # close() came before the loop ran
            self._stop.set()
        work = asyncio.ensure_future(self.engine.run())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.done():
            await stop              # mapped and renewed: wait for close()
        # A UPnP request in flight cannot be deleted blindly (the port may be
        # another host's): let those finish within half the time, ask nothing new.
        self.engine.stopping = True
        began = time.monotonic()
        while (self.engine.upnp_inflight() and not work.done()
               and time.monotonic() < began + self._close_timeout / 2):
            await asyncio.sleep(0.01)
        work.cancel()
        try:
            await work
        except BaseException:
            pass
        await self.engine.remove_all(max(began + self._close_timeout - time.monotonic(), 0.1))

    def status(self) -> PortmapStatus:
        """A snapshot, at once, from any thread."""
        return self.engine.snapshot()

    def wait(self, timeout: float | None = None) -> PortmapStatus:
        """Block until discovery and the first mapping round are over (or
        *timeout*); for tools and tests, not for the punch."""
        self._finished.wait(timeout)
        return self.status()

    def close(self, timeout: float = 1.0) -> None:
        """Remove every mapping and stop the thread; returns within about
        *timeout* seconds.  Idempotent; safe from ``finally`` and from a
        signal handler in the main thread."""
        with self._lock:
            first = not self._closed
            self._closed = True
            thread = self._thread
        if thread is None:
            if first:
                self._loop.close()
            return
        if first:
            self._close_timeout = timeout
            try:
                self._loop.call_soon_threadsafe(self._request_stop)
            except RuntimeError:       # the loop has already ended
                pass
        if thread is not threading.current_thread():
            thread.join(timeout + 0.25)

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def __enter__(self) -> "PortMapper":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# -- what is my address ------------------------------------------------------

@dataclass(frozen=True)
class AddressReport:
    """The public IPv4 address as the router reports it, this host's global
    IPv6 addresses, and what to worry about."""

    public_ipv4: str | None
    reported: tuple[tuple[str, str, str], ...]    # (protocol, gateway, address)
    ipv6: tuple[tuple[str, str], ...]             # (address, interface)
    warnings: tuple[str, ...]
    lines: tuple[str, ...]                        # what each protocol answered, human


async def whoami_async(timeout: float = 0.5, *, protocols: Iterable[str] = PROTOCOLS,
                       gateways: Iterable[str] | None = None,
                       if_inet6: str = "/proc/net/if_inet6") -> AddressReport:
    """:func:`whoami` for a running asyncio loop."""
    engine = Engine((), discovery_timeout=timeout, protocols=protocols, gateways=gateways,
                    renew=False)
    try:
        await engine.run(map_ports=False)
    finally:
        await engine.remove_all(0.3)
    status = engine.snapshot()
    reported = tuple((a.protocol, a.gateway, a.public_address)
                     for a in status.answers if a.public_address)
    ipv6 = tuple(global_ipv6_addresses(if_inet6))
    lines = [a.line() for a in status.answers]
    lines += [f"IPv6: {address} on {escape(ifname)}" for address, ifname in ipv6]
    if not ipv6:
        lines.append("IPv6: no global address on this host")
    return AddressReport(status.public_address, reported, ipv6, status.warnings, tuple(lines))


def whoami(timeout: float = 0.5, *, protocols: Iterable[str] = PROTOCOLS,
           gateways: Iterable[str] | None = None,
           if_inet6: str = "/proc/net/if_inet6") -> AddressReport:
    """Ask the default gateway(s) for the public IPv4 address (PCP, NAT-PMP
    and UPnP in parallel, within about *timeout* seconds plus a moment to
    remove PCP's throwaway mapping) and list this host's global IPv6
    addresses.  Blocks; runs its own event loop."""
    return asyncio.run(whoami_async(timeout, protocols=protocols, gateways=gateways,
                                    if_inet6=if_inet6))
