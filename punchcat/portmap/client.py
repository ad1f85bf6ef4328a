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
default), the first round of mapping by ``request_timeout`` (what is still
unanswered then goes on in the background, up to :data:`PATIENCE`, and is
recorded when it comes), removal by ``close(timeout)``.  Only the default
gateway(s) from /proc/net/route are asked; SSDP answers and description URLs
that point elsewhere are ignored.

A router answers one request at a time (miniupnpd: one thread; the lab's
took 2 ms per PCP or NAT-PMP request and 5 ms per UPnP one), and punchcat
asks for 32 ports at every punch.  So requests are paced per gateway: a few
at a time (:data:`UDP_WINDOW`, :data:`UPNP_PARALLEL`), none retransmitted
while the router is still answering older ones, and removal confirmed by the
router, including of what requests whose answer never came may have mapped.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

from . import natpmp, pcp, upnp
from .common import MalformedResponse, classify_ipv4, escape
from .local import default_gateways, global_ipv6_addresses

PROTOCOLS = ("pcp", "natpmp", "upnp")
#: The failure of a port whose request is still waiting for an answer.
STILL_ASKING = "no answer yet (still asking)"
NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP"}
#: First retransmission of a UDP request (RFC 6886 says 250 ms; RFC 6887's 3 s
#: would never retransmit within a sub-second discovery), doubled each time.
RETRY = 0.25
MAX_GATEWAYS = 3
#: Once a protocol has answered, how long a better one still pending is waited for.
GRACE = 0.1
#: PCP and NAT-PMP requests waiting for an answer from one gateway at once.
#: A router answers them one by one (miniupnpd: one socket, one thread, a few
#: ms each): a deeper queue maps no faster, and what is sent later (removal
#: at close) would wait behind it.
UDP_WINDOW = 8
#: UPnP requests to one gateway at once: miniupnpd listens with a backlog of
#: 5, and a connection beyond it waits for a SYN retransmission (1 s).
UPNP_PARALLEL = 4
#: A mapping request still unanswered when the first round ends
#: (``request_timeout``) goes on being retransmitted until this many seconds
#: after the round began; a mapping that comes late is recorded like any other.
PATIENCE = 5.0
#: Renewals due within this many seconds of the first due one go with it.
RENEW_TOGETHER = 1.0

#: The engines of this process.  When the clock rolls the candidate ports,
#: punchcat starts a mapper for the new set and removes the old one while
#: half the ports are in both: the old one leaves those to the new one
#: (NAT-PMP and UPnP remove by port, whoever asked; PCP by nonce).
_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_ENGINES_LOCK = threading.Lock()


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


class _Window:
    """At most *size* holders at once, first come first served; waiting is
    bounded by a deadline and safe to cancel."""

    def __init__(self, size: int):
        self.free = size
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self, deadline: float) -> bool:
        """True once held (then :meth:`release`), False if *deadline* came first."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        if _remaining(deadline) <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(_remaining(deadline),
                                lambda: waiter.done() or waiter.set_result(False))
        try:
            granted = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()              # granted, but we are cancelled
            self._forget(waiter)
            raise
        finally:
            timer.cancel()
        if not granted:
            self._forget(waiter)
        return granted

    def _forget(self, waiter: asyncio.Future) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.free += 1


class _Pace:
    """The requests to one gateway's UDP service (PCP and NAT-PMP share port
    5351).  At most :data:`UDP_WINDOW` wait for an answer at once, and a
    request is not retransmitted while the router is still answering older
    ones: a router answers in order, so it is late, not lost, and a copy
    would only lengthen the queue (measured against a slow miniupnpd: copies
    every 0.25 s, 0.5 s, … tripled its work and pushed removal past close)."""

    def __init__(self) -> None:
        self.window = _Window(UDP_WINDOW)
        self.sent = 0                           # requests numbered as first sent
        self.answered = (0, -float("inf"))      # (number, when) of the latest answer

    def number(self) -> int:
        self.sent += 1
        return self.sent

    def busy_before(self, number: int, now: float, interval: float) -> bool:
        """The router answered a request sent before request *number* less
        than *interval* ago: it is still working through the queue."""
        latest, when = self.answered
        return latest < number and now - when < interval


async def udp_exchange(gateway: str, port: int, build: Callable[[str], bytes],
                       parse: Callable[[bytes], object], deadline: float,
                       pace: _Pace | None = None,
                       resend: Callable[[], bool] | None = None) -> object:
    """Send ``build(our address)`` to *gateway*:*port*, retransmitting after
    0.25 s, 0.5 s, …, until ``parse`` accepts an answer from it or
    *deadline* (monotonic) passes.  Datagrams that do not parse are skipped
    (and reported if nothing better comes).  With *pace*, a retransmission
    waits while the gateway is answering older requests; *resend* (if
    given) says whether retransmitting is still wanted."""
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
        number = pace.number() if pace is not None else 0
        transport.sendto(payload)
        next_send = time.monotonic() + interval
        while True:
            now = time.monotonic()
            wait = min(next_send, deadline) - now
            if wait <= 0:
                if now >= deadline:
                    break
                if pace is not None and pace.busy_before(number, now, interval):
                    next_send = pace.answered[1] + interval
                elif resend is None or resend():
                    interval *= 2
                    transport.sendto(payload)
                    next_send = time.monotonic() + interval
                else:
                    next_send = deadline
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
                result = parse(data)
            except MalformedResponse as e:
                garbage = escape(e)
                continue
            if pace is not None:
                pace.answered = (number, time.monotonic())
            return result
        if garbage is not None:
            raise _NoAnswer("garbage", f"unusable answer ({garbage})")
        raise _NoAnswer("silent", "no answer")
    finally:
        transport.close()


async def http_exchange(host: str, port: int, request: bytes, limit: int,
                        deadline: float) -> tuple[upnp.HttpResponse, str]:
    """One HTTP request on a fresh connection: (response, our address).
    Given up on (deadline, cancelled), the connection is closed, not reset:
    a slow router still reads and carries out the request (a removal at
    close matters most)."""
    writer = None
    answered = False
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
                    answered = True
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
            if answered or writer.transport.is_closing():
                writer.transport.abort()
            else:
                writer.transport.close()


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

    Over 200 lines (about 850) because it is one state machine over one set
    of gateways: discovery races the three protocols and picks one, and the
    mapping, renewal and removal that follow share its held mappings, its
    request pacing and its status; the protocols' wire formats are the
    modules beside it.  A split per protocol is the next step when a fourth
    protocol comes.
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
        self._pcp_probe: dict[str, tuple[int, bytes]] = {}   # gw -> (port, nonce), once sent
        self._dropped_probes: set[str] = set()               # gateways whose probe is not kept
        # Sent and possibly mapped, until removed: (protocol, gw, port) -> PCP nonce
        self._requested: dict[tuple[str, str, int], bytes | None] = {}
        self._heard: set[tuple[str, str]] = set()            # (protocol, gw) that answered
        self._upnp_inflight: set[tuple[str, int]] = set()
        # UPnP AddPortMapping sent, answer unknown: (gw, internal port) -> external port
        self._upnp_uncertain: dict[tuple[str, int], int] = {}
        self._probe_held: dict[str, _Held] = {}
        self._paces: dict[tuple[str, int], _Pace] = {}
        self._upnp_windows: dict[str, _Window] = {}
        self._changed: asyncio.Event | None = None
        self._throwaway: socket.socket | None = None
        self.stopping = False        # set when closing: start no new mapping requests
        with _ENGINES_LOCK:
            _ENGINES.add(self)

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
        chosen = None
        drop: asyncio.Future | None = None
        late: dict[int, asyncio.Future] = {}
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
                    # The PCP probes' mappings not kept go first (a router
                    # answers in order), then every port is asked for.
                    drop = asyncio.ensure_future(self._drop_unused_pcp_probes(chosen))
                    late = await self._map_all(*chosen)
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
            if drop is None:
                await self._drop_unused_pcp_probes(chosen)
            if late:
                await self._finish_late(chosen[0], chosen[1], late)
            if drop is not None:
                await drop
        finally:
            # (awaited: a UPnP request cancelled in flight records what it
            # may have mapped, for remove_all, which may come next)
            pending = [t for t in [*probes, *late.values(), *([drop] if drop else [])]
                       if not t.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
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
            self._requested[("pcp", gw, port)] = nonce      # sent: it may map
            if probe:
                self._pcp_probe[gw] = (port, nonce)
            return pcp.map_request(local, port, nonce, lifetime, suggested)

        try:
            response = await self._udp(
                gw, pcp.PORT, build, lambda d: pcp.parse_map_response(d, nonce, port), deadline,
                resend=(lambda: gw not in self._dropped_probes) if probe else None)
        except _NoAnswer as e:
            return f"{e.outcome}\0{e.text}"
        self._check_epoch("pcp", gw, response.epoch)
        if response.version == 0:
            self._nothing_mapped("pcp", gw, port, nonce, held)
            return "refused\0the router speaks NAT-PMP only (PCP: unsupported version)"
        self._heard.add(("pcp", gw))
        if not response.ok:
            self._nothing_mapped("pcp", gw, port, nonce, held)
            return f"refused\0refused: {pcp.result_text(response.result)}"
        mapping = Mapping("pcp", gw, port, response.external_port, response.external_address,
                          response.lifetime)
        held = _Held(mapping, time.monotonic(), nonce, local_box[0])
        if probe:
            address = response.external_address
            text = f"public address {address}" if self.ports else f"public address {address} (from a throwaway mapping, removed)"
            self._answer(Answer("pcp", gw, "ok", address, text))
            if self.ports and gw not in self._dropped_probes:
                self._probe_held[gw] = held
        return held

    def _nothing_mapped(self, protocol: str, gw: str, port: int, nonce: bytes | None,
                        held: _Held | None) -> None:
        """A first request was refused: it mapped nothing, nothing to remove."""
        if held is None and self._requested.get((protocol, gw, port), b"") == nonce:
            del self._requested[(protocol, gw, port)]

    def _pace(self, gw: str, port: int) -> _Pace:
        pace = self._paces.get((gw, port))
        if pace is None:
            pace = self._paces[(gw, port)] = _Pace()
        return pace

    async def _udp(self, gw: str, port: int, build: Callable[[str], bytes],
                   parse: Callable[[bytes], object], deadline: float, *, mapping: bool = True,
                   resend: Callable[[], bool] | None = None) -> object:
        """:func:`udp_exchange` paced for the gateway (:class:`_Pace`).  A
        mapping request waits for its turn in the window (and is not sent once
        closing); a removal does not: removals come last, and all of them
        reach the router's queue at once, where it works through them even
        after we stopped waiting (a slow router at close)."""
        pace = self._pace(gw, port)
        if not mapping:
            return await udp_exchange(gw, port, build, parse, deadline, pace, resend)
        if not await pace.window.acquire(deadline):
            raise _NoAnswer("silent", "not asked in time: the router was still answering "
                                      "earlier requests")
        try:
            if self.stopping:
                raise _NoAnswer("silent", "closed before it was asked for")
            return await udp_exchange(gw, port, build, parse, deadline, pace, resend)
        finally:
            pace.window.release()

    async def _probe_natpmp(self, gw: str, deadline: float) -> None:
        response = await self._udp(gw, natpmp.PORT, lambda _: natpmp.external_address_request(),
                                   _natpmp_parser(natpmp.AddressResponse, None), deadline)
        self._heard.add(("natpmp", gw))
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
    async def _map_all(self, protocol: str, gw: str) -> dict[int, asyncio.Future]:
        """Ask for every port (as many at once as the gateway's window lets
        through); return once all are answered or the first round
        (``request_timeout``) is over, with the requests still going on."""
        give_up = time.monotonic() + max(PATIENCE, self.request_timeout)

        async def one(port: int) -> None:
            result = await self._map_one(protocol, gw, port, give_up)
            self._record(protocol, gw, port, result)

        tasks = {port: asyncio.ensure_future(one(port)) for port in self.ports}
        try:
            await asyncio.wait(tasks.values(), timeout=self.request_timeout)
        except BaseException:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        late = {port: task for port, task in tasks.items() if not task.done()}
        with self._lock:
            for port in late:
                self._failures[port] = STILL_ASKING
        self._summarise(protocol, gw)
        return late

    async def _finish_late(self, protocol: str, gw: str, late: dict[int, asyncio.Future]) -> None:
        """Wait for the requests that outlived the first round; say what they got."""
        began = time.monotonic()
        await asyncio.gather(*late.values(), return_exceptions=True)
        with self._lock:
            mapped = sorted(p for p in late if p in self._held)
            failed = {p: self._failures.get(p, "") for p in late if p not in self._held}
        lines = []
        if mapped:
            lines.append(f"{NAMES[protocol]}: gateway {gw} mapped TCP {_ports(mapped)} late "
                         f"(within {self.request_timeout + time.monotonic() - began:.1f} s)")
        for port, why in sorted(failed.items()):
            lines.append(f"{NAMES[protocol]}: gateway {gw} did not map TCP {port}: {why}")
        if lines:
            with self._lock:
                self._notes.extend(lines)
            self._update()

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

        def build(_: str) -> bytes:
            self._requested[("natpmp", gw, port)] = None      # sent: it may map
            return natpmp.map_tcp_request(port, suggested, self.lifetime)

        try:
            response = await self._udp(gw, natpmp.PORT, build,
                                       _natpmp_parser(natpmp.MapResponse, port), deadline)
        except _NoAnswer as e:
            return e.text
        self._heard.add(("natpmp", gw))
        self._check_epoch("natpmp", gw, response.epoch)
        if not response.ok:
            self._nothing_mapped("natpmp", gw, port, None, held)
            return f"refused: {natpmp.result_text(response.result)}"
        address = self._answers.get(("natpmp", gw))
        return _Held(Mapping("natpmp", gw, port, response.external_port,
                             address.public_address if address else None, response.lifetime),
                     time.monotonic())

    def _upnp_window(self, gw: str) -> _Window:
        window = self._upnp_windows.get(gw)
        if window is None:
            window = self._upnp_windows[gw] = _Window(UPNP_PARALLEL)
        return window

    async def _soap(self, gw: str, service: upnp.Service, request: bytes, action: str,
                    deadline: float) -> upnp.SoapResult:
        """One SOAP call through the gateway's window."""
        window = self._upnp_window(gw)
        if not await window.acquire(deadline):
            raise _NoAnswer("silent", "not asked in time: the router was still answering "
                                      "earlier requests")
        try:
            result, _ = await soap_call(service, request, action, deadline)
            return result
        finally:
            window.release()

    async def _upnp_map(self, gw: str, port: int, deadline: float,
                        held: _Held | None) -> _Held | str:
        igd = self._igd[gw]
        service = igd.service
        external = held.mapping.external_port if held else port
        lease = held.mapping.lifetime if held else self.lifetime
        address = self._answers[("upnp", gw)].public_address
        window = self._upnp_window(gw)
        if not await window.acquire(deadline):
            return "not asked in time: the router was still answering earlier requests"
        asked: int | None = None     # the external port of an AddPortMapping not answered yet
        self._upnp_inflight.add((gw, port))
        try:
            if self.stopping:
                return "closed before it was asked for"

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
            if asked is not None and e.outcome != "closed":
                self._upnp_uncertain[(gw, port)] = asked     # it may have mapped
            return e.text
        except asyncio.CancelledError:
            if asked is not None:
                self._upnp_uncertain[(gw, port)] = asked
            raise
        finally:
            self._upnp_inflight.discard((gw, port))
            window.release()

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
        asking = sorted(p for p, why in failures.items() if why == STILL_ASKING)
        if asking:
            lines.append(f"{name}: gateway {gw}: no answer yet for TCP {_ports(asking)} "
                         "(still asking)")
        for port, why in sorted(failures.items()):
            if why != STILL_ASKING:
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
        """Renew each mapping at half its granted lifetime, all that are due
        about together at once (through the gateway's window); a failed
        renewal is tried again 5 s, 10 s, … later while the mapping lasts."""
        failures: dict[int, int] = {}
        retry_at: dict[int, float] = {}
        while True:
            now = time.monotonic()
            with self._lock:
                due = {port: retry_at.get(port, held.granted_at + held.mapping.lifetime / 2)
                       for port, held in self._held.items() if held.mapping.lifetime}
            if not due:
                return
            wake = min(due.values())
            if wake > now:
                await asyncio.sleep(min(wake - now, 3600))
                continue
            batch = sorted(port for port, when in due.items() if when <= now + RENEW_TOGETHER)
            results = await asyncio.gather(*(self._renew(port) for port in batch))
            failed: dict[tuple[str, str], list[int]] = {}
            expired: list[int] = []
            for port, (held, result) in zip(batch, results):
                if held is None:
                    continue
                m = held.mapping
                if isinstance(result, _Held):
                    failures.pop(port, None)
                    retry_at.pop(port, None)
                    if result.mapping.external_port != m.external_port:
                        self._note(f"{NAMES[m.protocol]}: renewal moved TCP {port} to external "
                                   f"port {result.mapping.external_port}")
                    with self._lock:
                        self._held[port] = result
                    continue
                failures[port] = failures.get(port, 0) + 1
                retry_at[port] = time.monotonic() + min(5.0 * 2 ** (failures[port] - 1), 300.0)
                failed.setdefault((m.protocol, result), []).append(port)
                if time.monotonic() > held.granted_at + m.lifetime:
                    expired.append(port)
                    with self._lock:
                        self._held.pop(port, None)
                        self._failures[port] = f"expired: {result}"
                    failures.pop(port, None)
                    retry_at.pop(port, None)
            for (protocol, why), ports in failed.items():
                gone = [p for p in ports if p in expired]
                self._note(f"{NAMES[protocol]}: renewing TCP {_ports(ports)} failed: {why}"
                           + (f"; TCP {_ports(gone)} expired" if gone else ""))
            self._update()

    async def _renew(self, port: int) -> tuple[_Held | None, _Held | str]:
        held = self._held.get(port)
        if held is None:
            return None, ""
        m = held.mapping
        # In the background: more patience than the first round, less than the lease.
        deadline = time.monotonic() + max(self.request_timeout, min(PATIENCE, m.lifetime / 4))
        return held, await self._map_one(m.protocol, m.gateway, port, deadline, held)

    # -- removal -------------------------------------------------------------
    def wants(self, protocol: str, gw: str, port: int) -> bool:
        """Whether this engine holds TCP *port* at *gw* by *protocol*, or has
        asked for it, and is not removing its mappings (safe from any thread)."""
        if self.stopping:
            return False
        with self._lock:
            held = self._held.get(port)
        if held is not None and (held.mapping.protocol, held.mapping.gateway) == (protocol, gw):
            return True
        if protocol == "upnp":
            return (gw, port) in self._upnp_inflight or (gw, port) in self._upnp_uncertain
        return (protocol, gw, port) in self._requested

    def _wanted_elsewhere(self, protocol: str, gw: str, port: int) -> bool:
        """Another engine of this process holds or asks for the same mapping
        (NAT-PMP and UPnP remove by port; PCP removes by nonce, only ours)."""
        if protocol == "pcp":
            return False
        with _ENGINES_LOCK:
            others = [engine for engine in _ENGINES if engine is not self]
        return any(engine.wants(protocol, gw, port) for engine in others)

    def upnp_inflight(self) -> bool:
        """Whether a UPnP mapping request is waiting for its answer."""
        return bool(self._upnp_inflight)

    async def _drop_unused_pcp_probes(self, chosen: tuple[str, str] | None) -> None:
        """Remove the mappings of the PCP probes not kept as real mappings
        (the probe maps the first port, to learn the public address): every
        one but the chosen gateway's when PCP is chosen.  Answered or not: an
        answer may be late or lost, and deleting by nonce touches nothing else
        (another protocol's mapping of the port, or another nonce's, is left:
        the router answers NOT_AUTHORIZED)."""
        tasks = []
        for gw, (port, nonce) in list(self._pcp_probe.items()):
            if chosen == ("pcp", gw):
                continue
            del self._pcp_probe[gw]
            self._dropped_probes.add(gw)     # no more retransmissions of it
            self._probe_held.pop(gw, None)
            if self._requested.get(("pcp", gw, port)) != nonce:
                continue                     # refused: nothing mapped
            if ("pcp", gw) in self._heard:
                tasks.append(self._remove_requested("pcp", gw, port, nonce,
                                                    time.monotonic() + 0.5))
            else:                            # PCP silent so far: one datagram, and again at close
                _send_once(gw, pcp.PORT,
                           lambda local, p=port, n=nonce: pcp.map_request(local, p, n, 0, 0))
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._throwaway is not None:
            self._throwaway.close()
            self._throwaway = None

    async def _remove_requested(self, protocol: str, gw: str, port: int, nonce: bytes | None,
                                deadline: float) -> bool:
        delete = (self._pcp_delete(gw, port, nonce, deadline) if protocol == "pcp"
                  else self._natpmp_delete(gw, port, deadline))
        if not await delete:
            return False
        if self._requested.get((protocol, gw, port), b"") == nonce:
            del self._requested[(protocol, gw, port)]
        return True

    async def _pcp_delete(self, gw: str, port: int, nonce: bytes, deadline: float) -> bool:
        try:
            response = await self._udp(
                gw, pcp.PORT, lambda local: pcp.map_request(local, port, nonce, 0, 0),
                lambda d: pcp.parse_map_response(d, nonce, port), deadline, mapping=False)
        except _NoAnswer:
            return False
        # NO_RESOURCES: nothing was there (miniupnpd); NOT_AUTHORIZED: what is
        # there is not this nonce's (another protocol or client took it over)
        return response.ok or response.result in (pcp.NOT_AUTHORIZED, 8)

    async def _natpmp_delete(self, gw: str, port: int, deadline: float) -> bool:
        try:
            response = await self._udp(
                gw, natpmp.PORT, lambda _: natpmp.map_tcp_request(port, 0, 0),
                _natpmp_parser(natpmp.MapResponse, port), deadline, mapping=False)
        except _NoAnswer:
            return False
        return response.ok

    async def _upnp_delete(self, gw: str, external: int, deadline: float) -> bool:
        igd = self._igd.get(gw)
        if igd is None:
            return False
        try:
            result = await self._soap(gw, igd.service,
                                      upnp.delete_port_mapping_request(igd.service, external),
                                      "DeletePortMapping", deadline)
        except _NoAnswer:
            return False
        return result.ok or (result.fault is not None and result.fault.code == 714)

    async def _upnp_delete_if_ours(self, gw: str, port: int, external: int,
                                   deadline: float) -> bool:
        """Delete what an unanswered AddPortMapping may have made: only if the
        router's entry for *external* forwards to us, port *port* (another
        host's mapping of that port must stay)."""
        igd = self._igd.get(gw)
        if igd is None:
            return False
        try:
            result = await self._soap(
                gw, igd.service, upnp.get_specific_port_mapping_entry_request(igd.service, external),
                "GetSpecificPortMappingEntry", deadline)
        except _NoAnswer:
            return False
        if not result.ok:
            return result.fault is not None and result.fault.code == 714   # no such entry
        if (result.values.get("NewInternalClient") != igd.local_address
                or result.values.get("NewInternalPort") != str(port)):
            return True
        return await self._upnp_delete(gw, external, deadline)

    async def remove_all(self, timeout: float = 1.0) -> None:
        """Remove every mapping made or possibly made (idempotent, bounded by
        *timeout*), and wait for the router to confirm: held ones, and
        requests sent whose answer never came (deleting those is harmless:
        PCP and NAT-PMP ones are bound to our address and port, or nonce; a
        UPnP one is deleted only if the router's entry forwards to us).  To
        a protocol that never answered at all, one datagram each, not waited
        for.  UPnP requests still in flight are given part of the time to
        finish by :class:`PortMapper` first.  A port that another engine of
        this process holds or asks for too (the ports rolled) is left to it."""
        deadline = time.monotonic() + timeout
        self.stopping = True
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        removals, what, left = [], [], []
        done_keys = set()
        for h in held:
            m = h.mapping
            done_keys.add((m.protocol, m.gateway, m.internal_port))
            if self._wanted_elsewhere(m.protocol, m.gateway, m.internal_port):
                left.append(m)
            elif m.protocol == "pcp":
                removals.append(self._pcp_delete(m.gateway, m.internal_port, h.nonce, deadline))
            elif m.protocol == "natpmp":
                removals.append(self._natpmp_delete(m.gateway, m.internal_port, deadline))
            else:
                removals.append(self._upnp_delete(m.gateway, m.external_port, deadline))
            what.append(m)
        unsure, unsure_ports = [], []
        for (protocol, gw, port), nonce in list(self._requested.items()):
            if (protocol, gw, port) in done_keys or self._wanted_elsewhere(protocol, gw, port):
                continue
            if (protocol, gw) in self._heard:
                unsure.append(self._remove_requested(protocol, gw, port, nonce, deadline))
                unsure_ports.append(port)
            elif protocol == "pcp" and nonce is not None:
                _send_once(gw, pcp.PORT,
                           lambda local, p=port, n=nonce: pcp.map_request(local, p, n, 0, 0))
            elif protocol == "natpmp":
                _send_once(gw, natpmp.PORT, lambda _, p=port: natpmp.map_tcp_request(p, 0, 0))
        for (gw, port), external in list(self._upnp_uncertain.items()):
            if (("upnp", gw, port) not in done_keys
                    and not self._wanted_elsewhere("upnp", gw, port)):
                unsure.append(self._upnp_delete_if_ours(gw, port, external, deadline))
                unsure_ports.append(port)
        self._requested.clear()
        self._upnp_uncertain.clear()
        self._pcp_probe.clear()
        if self._throwaway is not None:
            self._throwaway.close()
            self._throwaway = None
        if left:
            self._note(f"{NAMES[left[0].protocol]}: TCP "
                       f"{_ports(sorted(m.internal_port for m in left))} left mapped for the "
                       "other mapper that holds them too")
        if not removals and not unsure:
            return
        results = await asyncio.gather(*removals, *unsure, return_exceptions=True)
        confirmed = [m for m, ok in zip(what, results) if ok is True]
        unconfirmed = [m for m, ok in zip(what, results) if ok is not True]
        unknown = sorted(p for p, ok in zip(unsure_ports, results[len(removals):]) if ok is not True)
        if confirmed:
            self._note(f"{NAMES[confirmed[0].protocol]}: removed "
                       f"{len(confirmed)} mapping{'s' if len(confirmed) != 1 else ''} "
                       f"(TCP {_ports(sorted(m.internal_port for m in confirmed))})")
        if unconfirmed:
            self._note(f"{NAMES[unconfirmed[0].protocol]}: removal of TCP "
                       f"{_ports(sorted(m.internal_port for m in unconfirmed))} not confirmed "
                       "in time (the router drops them when their lease ends)")
        if unknown:
            self._note(f"removal of what unanswered requests for TCP {_ports(unknown)} may have "
                       "mapped not confirmed in time (the router drops it when its lease ends)")


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
