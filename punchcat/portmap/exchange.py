"""The router client's exchanges with a gateway, bounded and paced: UDP
request and answer (PCP, NAT-PMP), one HTTP request (UPnP's description and
SOAP calls) and the SSDP search.

Every wait is bounded by a deadline (monotonic), and a request that gets no
usable answer raises :class:`~.results.NoAnswer` saying how ("silent",
"closed", "garbage", "error").  Only the gateway is listened to: datagrams
and SSDP answers from elsewhere, and SSDP LOCATIONs that point elsewhere,
are ignored.

A router answers one request at a time (miniupnpd: one thread; the lab's
took 2 ms per PCP or NAT-PMP request and 5 ms per UPnP one), and punchcat
asks for 32 ports at every punch.  So requests are paced per gateway
(:class:`Pacing`): a few at a time (:data:`UDP_WINDOW`,
:data:`UPNP_PARALLEL`), and none retransmitted while the router is still
answering older ones (:class:`Pace`).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from typing import Callable

from . import upnp
from .common import MalformedResponse, escape
from .results import NoAnswer

#: First retransmission of a UDP request (RFC 6886 says 250 ms; RFC 6887's 3 s
#: would never retransmit within a sub-second discovery), doubled each time.
RETRY = 0.25
#: PCP and NAT-PMP requests waiting for an answer from one gateway at once.
#: A router answers them one by one (miniupnpd: one socket, one thread, a few
#: ms each): a deeper queue maps no faster, and what is sent later (removal
#: at close) would wait behind it.
UDP_WINDOW = 8
#: UPnP requests to one gateway at once: miniupnpd listens with a backlog of
#: 5, and a connection beyond it waits for a SYN retransmission (1 s).
UPNP_PARALLEL = 4
#: Datagrams queued unread per socket; beyond, a flood is dropped.
QUEUE = 64
NOT_IN_TIME = "not asked in time: the router was still answering earlier requests"
CLOSING = "closed before it was asked for"


def remaining(deadline: float) -> float:
    return deadline - time.monotonic()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        if self.queue.qsize() < QUEUE:
            self.queue.put_nowait((data, addr))

    def error_received(self, exc) -> None:
        if self.queue.qsize() < QUEUE:
            self.queue.put_nowait((exc, None))


class Window:
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
        if remaining(deadline) <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(remaining(deadline),
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


class Pace:
    """The requests to one gateway's UDP service (PCP and NAT-PMP share port
    5351).  At most :data:`UDP_WINDOW` wait for an answer at once, and a
    request is not retransmitted while the router is still answering older
    ones: a router answers in order, so it is late, not lost, and a copy
    would only lengthen the queue (measured against a slow miniupnpd: copies
    every 0.25 s, 0.5 s, … tripled its work and pushed removal past close)."""

    def __init__(self) -> None:
        self.window = Window(UDP_WINDOW)
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
                       pace: Pace | None = None,
                       resend: Callable[[], bool] | None = None) -> object:
    """Send ``build(our address)`` to *gateway*:*port*, retransmitting after
    0.25 s, 0.5 s, …, until ``parse`` accepts an answer from it or
    *deadline* (monotonic) passes.  Datagrams that do not parse are skipped
    (and reported if nothing better comes).  With *pace*, a retransmission
    waits while the gateway is answering older requests; *resend* (if
    given) says whether retransmitting is still wanted."""
    loop = asyncio.get_running_loop()
    if remaining(deadline) <= 0:
        raise NoAnswer("silent", "no time left to ask")
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _Datagrams, remote_addr=(gateway, port))
    except OSError as e:
        raise NoAnswer("error", f"cannot send: {e.strerror or e}") from None
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
                raise NoAnswer("closed", f"port {port} closed (ICMP port unreachable)")
            if isinstance(data, OSError):
                raise NoAnswer("error", f"network error: {data.strerror or data}")
            try:
                result = parse(data)
            except MalformedResponse as e:
                garbage = escape(e)
                continue
            if pace is not None:
                pace.answered = (number, time.monotonic())
            return result
        if garbage is not None:
            raise NoAnswer("garbage", f"unusable answer ({garbage})")
        raise NoAnswer("silent", "no answer")
    finally:
        transport.close()


def send_once(gateway: str, port: int, build: Callable[[str], bytes]) -> None:
    """Send one datagram to *gateway*:*port* and forget it (never blocks)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((gateway, port))
            sock.send(build(sock.getsockname()[0]))
    except OSError:
        pass


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
                                                    max(remaining(deadline), 0.001))
            local = writer.get_extra_info("sockname")[0]
            writer.write(request)
            buffer = b""
            while True:
                chunk = await asyncio.wait_for(reader.read(16384),
                                               max(remaining(deadline), 0.001))
                buffer += chunk
                response = upnp.parse_http_response(buffer, not chunk, limit)
                if response is not None:
                    answered = True
                    return response, local
        except asyncio.TimeoutError:
            raise NoAnswer("silent", f"no HTTP answer from {host}:{port} in time") from None
        except ConnectionRefusedError:
            raise NoAnswer("closed", f"HTTP port {port} closed") from None
        except MalformedResponse as e:
            raise NoAnswer("garbage", f"unusable HTTP answer ({escape(e)})") from None
        except OSError as e:
            raise NoAnswer("error", f"HTTP: {escape(e.strerror or e)}") from None
    finally:
        if writer is not None:
            if answered or writer.transport.is_closing():
                writer.transport.abort()
            else:
                writer.transport.close()


async def soap_call(service: upnp.Service, request: bytes, action: str,
                    deadline: float) -> tuple[upnp.SoapResult, str]:
    """One SOAP call: (the result or fault, our address)."""
    host, port, _ = upnp.split_http_url(service.control_url)
    response, local = await http_exchange(host, port, request, upnp.MAX_SOAP, deadline)
    try:
        return upnp.parse_soap_response(response, action), local
    except MalformedResponse as e:
        raise NoAnswer("garbage", f"unusable {action} answer ({escape(e)})") from None


async def ssdp_search(gateway: str, deadline: float) -> upnp.SsdpResponse:
    """Search for an IGD: unicast M-SEARCHes to the gateway (answered at
    once by UPnP 1.1 devices) and multicast ones (MX 1); only answers from
    the gateway whose LOCATION is on the gateway count."""
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _Datagrams, local_addr=("0.0.0.0", 0), family=socket.AF_INET)
    except OSError as e:
        raise NoAnswer("error", f"cannot send: {e.strerror or e}") from None
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
            raise NoAnswer("garbage", f"unusable SSDP answer ({garbage})")
        raise NoAnswer("silent", "no answer to SSDP M-SEARCH")
    finally:
        transport.close()


class Pacing:
    """One engine's requests to its gateways, paced per gateway: PCP and
    NAT-PMP through the :class:`Pace` of the gateway's UDP port (they share
    5351), UPnP's SOAP calls through a :class:`Window` of
    :data:`UPNP_PARALLEL`.  Once :attr:`stopping` (closing), no new mapping
    request is sent."""

    def __init__(self) -> None:
        self.stopping = False
        self._paces: dict[tuple[str, int], Pace] = {}
        self._windows: dict[str, Window] = {}

    def pace(self, gw: str, port: int) -> Pace:
        pace = self._paces.get((gw, port))
        if pace is None:
            pace = self._paces[(gw, port)] = Pace()
        return pace

    def window(self, gw: str) -> Window:
        """The gateway's window for UPnP requests."""
        window = self._windows.get(gw)
        if window is None:
            window = self._windows[gw] = Window(UPNP_PARALLEL)
        return window

    async def udp(self, gw: str, port: int, build: Callable[[str], bytes],
                  parse: Callable[[bytes], object], deadline: float, *, mapping: bool = True,
                  resend: Callable[[], bool] | None = None) -> object:
        """:func:`udp_exchange` paced for the gateway.  A mapping request
        waits for its turn in the window (and is not sent once stopping); a
        removal does not: removals come last, and all of them reach the
        router's queue at once, where it works through them even after we
        stopped waiting (a slow router at close)."""
        pace = self.pace(gw, port)
        if not mapping:
            return await udp_exchange(gw, port, build, parse, deadline, pace, resend)
        if not await pace.window.acquire(deadline):
            raise NoAnswer("silent", NOT_IN_TIME)
        try:
            if self.stopping:
                raise NoAnswer("silent", CLOSING)
            return await udp_exchange(gw, port, build, parse, deadline, pace, resend)
        finally:
            pace.window.release()

    async def soap(self, gw: str, service: upnp.Service, request: bytes, action: str,
                   deadline: float) -> upnp.SoapResult:
        """One SOAP call through the gateway's window."""
        window = self.window(gw)
        if not await window.acquire(deadline):
            raise NoAnswer("silent", NOT_IN_TIME)
        try:
            result, _ = await soap_call(service, request, action, deadline)
            return result
        finally:
            window.release()
