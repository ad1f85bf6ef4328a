"""Ask the default gateway to map TCP ports, over PCP, NAT-PMP and UPnP-IGD,
in the background; and ask it for the public address.

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
The punch never waits on it.  The coroutines underneath
(:class:`~.engine.Engine`) can be driven by any asyncio loop directly, as
:func:`whoami_async` does.

Every network wait is bounded (see :mod:`.engine`); removal by
``close(timeout)``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from .common import escape
from .engine import Engine
from .local import global_ipv6_addresses
from .results import PROTOCOLS, PortmapStatus


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
        # A request in flight that removal could not replace (UPnP: the port
        # may be another host's): let those finish within half the time, ask
        # nothing new.
        self.engine.stopping = True
        began = time.monotonic()
        while (self.engine.awaiting_answers() and not work.done()
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
