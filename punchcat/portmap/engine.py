"""The router client's asyncio side: discover, choose, map, renew, remove.

One driver per protocol (:mod:`.pcp_driver`, :mod:`.natpmp_driver`,
:mod:`.upnp_driver`) knows how to probe, map, renew and delete, and keeps
that protocol's state; the engine only races their probes and chooses one,
schedules the mapping requests, renews what it holds and removes it, and
records all of it in its :class:`~.ledger.Ledger`.  It never asks which
protocol a driver speaks.

Every network wait is bounded: discovery by ``discovery_timeout`` (0.5 s by
default), the first round of mapping by ``request_timeout`` (what is still
unanswered then goes on in the background, up to :data:`PATIENCE`, and is
recorded when it comes), removal by :meth:`Engine.remove_all`'s timeout.
Only the default gateway(s) from /proc/net/route are asked.  Removal is
confirmed by the router, including of what requests whose answer never came
may have mapped.  The engines of one process hand ports over to each other
when the ports roll (:mod:`.handover`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

from .common import escape
from .driver import Driver, Held
from .exchange import CLOSING, Pacing, remaining
from .handover import HANDOVER, REMOVING, Claims, Key
from .ledger import Ledger
from .local import default_gateways
from .natpmp_driver import NatPmpDriver
from .pcp_driver import PcpDriver
from .results import (NAMES, PROTOCOLS, STILL_ASKING, Answer, NoAnswer, PortmapStatus,
                      Refusal, ports_text)
from .upnp_driver import UpnpDriver

DRIVERS: dict[str, type[Driver]] = {d.protocol: d for d in (PcpDriver, NatPmpDriver, UpnpDriver)}
MAX_GATEWAYS = 3
#: Once a protocol has answered, how long a better one still pending is waited for.
GRACE = 0.1
#: A mapping request still unanswered when the first round ends
#: (``request_timeout``) goes on being retransmitted until this many seconds
#: after the round began; a mapping that comes late is recorded like any other.
PATIENCE = 5.0
#: Renewals due within this many seconds of the first due one go with it.
RENEW_TOGETHER = 1.0


class Engine:
    """Discovery, mapping, renewal and removal over one set of gateways.

    Drive it with :meth:`run` (discovery, mapping, then renewal until
    cancelled) and :meth:`remove_all` (bounded removal);
    :class:`~.client.PortMapper` does both in a thread.  :meth:`snapshot`
    is safe from any thread.
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
        self.ledger = Ledger(self.protocols, discovery_timeout, on_update)
        self.pacing = Pacing()
        self.drivers = {p: DRIVERS[p](self.pacing, self.ports, self.lifetime, self.ledger.note)
                        for p in self.protocols}
        HANDOVER.join(self)

    @property
    def stopping(self) -> bool:
        """Set when closing: start no new mapping requests."""
        return self.pacing.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.pacing.stopping = value

    def snapshot(self) -> PortmapStatus:
        return self.ledger.snapshot()

    # -- discovery -----------------------------------------------------------
    async def run(self, map_ports: bool = True) -> None:
        """Discover, choose a protocol, map the ports, then keep them renewed
        (until cancelled; returns after discovery when *map_ports* is false)."""
        ledger = self.ledger
        ledger.changed = asyncio.Event()
        gateways = (self._given_gateways if self._given_gateways is not None
                    else default_gateways())[:MAX_GATEWAYS]
        with ledger.lock:
            ledger.gateways = list(gateways)
            if not gateways:
                ledger.warnings.append("no IPv4 default route: there is no router to ask")
        if not gateways or not self.protocols:
            ledger.finish()
            return
        deadline = time.monotonic() + self.discovery_timeout
        probes = []
        for gw in gateways:
            for protocol, driver in self.drivers.items():
                ledger.answer(Answer(protocol, gw, "pending", text="asking"))
                probes.append(asyncio.ensure_future(
                    self._guard(protocol, gw, driver.probe(gw, deadline))))
        chosen = None
        drop: asyncio.Future | None = None
        late: dict[int, asyncio.Future] = {}
        try:
            if map_ports:
                chosen = await self._choose(deadline)
                with ledger.lock:
                    ledger.chosen = chosen
                    if chosen is None and not ledger.failures:
                        for port in self.ports:
                            ledger.failures[port] = "no router offered to map it"
                ledger.update()
                if chosen is not None:
                    # The probes' mappings not kept go first (a router
                    # answers in order), then every port is asked for.
                    drop = asyncio.ensure_future(self._drop_probes(chosen))
                    late = await self._map_all(*chosen)
                else:               # the deadline has passed: every probe is over
                    await asyncio.gather(*probes, return_exceptions=True)
                    ledger.warn_about_addresses()
                ledger.finish()     # what the punch waits for (lower-
                                    # priority answers may still come)
            # Probes end by the discovery deadline; a probe that mapped a port
            # we do not keep is undone once it is over.
            await asyncio.gather(*probes, return_exceptions=True)
            ledger.warn_about_addresses()
            if drop is None:
                await self._drop_probes(chosen)
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
            ledger.finish()
        if map_ports and self.renew and ledger.held:
            await self._renew_loop()

    async def _guard(self, protocol: str, gateway: str, probe) -> None:
        try:
            answer = await probe
        except NoAnswer as e:
            self.ledger.answer(Answer(protocol, gateway, e.refusal.outcome, text=e.refusal.text))
        except asyncio.CancelledError:
            self.ledger.answer(Answer(protocol, gateway, "silent",
                                      text="stopped before an answer"))
            raise
        except Exception as e:          # a bug, reported rather than lost
            self.ledger.answer(Answer(protocol, gateway, "error",
                                      text=f"failed: {escape(repr(e))}"))
        else:
            self.ledger.answer(answer)
            return
        if self.ledger.answers[(protocol, gateway)].outcome == "silent":
            self.ledger.answer(Answer(protocol, gateway, "silent",
                                      text=f"no answer within {self.discovery_timeout:g} s"))

    async def _choose(self, deadline: float) -> tuple[str, str] | None:
        """The best gateway and protocol that answered: gateways in route
        order, then PCP, NAT-PMP, UPnP.  A better one still pending is waited
        for, until the deadline or, once a worse one has answered, for GRACE
        seconds more (a router that ignores PCP must not cost the whole
        deadline)."""
        ledger = self.ledger
        settle = deadline
        while True:
            final = time.monotonic() >= settle
            best = None
            waiting = False
            with ledger.lock:
                for gw in ledger.gateways:
                    for protocol in self.protocols:
                        answer = ledger.answers[(protocol, gw)]
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
            ledger.changed.clear()
            try:
                await asyncio.wait_for(ledger.changed.wait(), max(remaining(settle), 0.001))
            except asyncio.TimeoutError:
                pass

    async def _drop_probes(self, chosen: tuple[str, str] | None) -> None:
        for driver in self.drivers.values():      # in order of preference: PCP's first
            await driver.drop_probes(chosen)

    # -- mapping -------------------------------------------------------------
    async def _map_all(self, protocol: str, gw: str) -> dict[int, asyncio.Future]:
        """Ask for every port (as many at once as the gateway's window lets
        through); return once all are answered or the first round
        (``request_timeout``) is over, with the requests still going on."""
        give_up = time.monotonic() + max(PATIENCE, self.request_timeout)

        async def one(port: int) -> None:
            # Asking from before the request waits for its turn until its
            # answer is recorded: no other engine removes the port meanwhile.
            key = (protocol, gw, port)
            if not await HANDOVER.ask(self, key, give_up):
                self.ledger.record(port, Refusal("silent", REMOVING))
                return
            try:
                self.ledger.record(port, await self._map_one(protocol, gw, port, give_up))
            finally:
                HANDOVER.done_asking(self, key)

        tasks = {port: asyncio.ensure_future(one(port)) for port in self.ports}
        try:
            await asyncio.wait(tasks.values(), timeout=self.request_timeout)
        except BaseException:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        late = {port: task for port, task in tasks.items() if not task.done()}
        with self.ledger.lock:
            for port in late:
                self.ledger.failures[port] = STILL_ASKING
        self.ledger.summarise(protocol, gw)
        return late

    async def _finish_late(self, protocol: str, gw: str, late: dict[int, asyncio.Future]) -> None:
        """Wait for the requests that outlived the first round; say what they got."""
        began = time.monotonic()
        await asyncio.gather(*late.values(), return_exceptions=True)
        self.ledger.summarise_late(protocol, gw, late,
                                   self.request_timeout + time.monotonic() - began)

    async def _map_one(self, protocol: str, gw: str, port: int, deadline: float,
                       held: Held | None = None) -> Held | Refusal:
        if self.stopping:
            return Refusal("silent", CLOSING)
        return await self.drivers[protocol].map(gw, port, deadline, held)

    # -- renewal -------------------------------------------------------------
    async def _renew_loop(self) -> None:
        """Renew each mapping at half its granted lifetime, all that are due
        about together at once (through the gateway's window); a failed
        renewal is tried again 5 s, 10 s, … later while the mapping lasts."""
        ledger = self.ledger
        failures: dict[int, int] = {}
        retry_at: dict[int, float] = {}
        while True:
            now = time.monotonic()
            with ledger.lock:
                due = {port: retry_at.get(port, held.granted_at + held.mapping.lifetime / 2)
                       for port, held in ledger.held.items() if held.mapping.lifetime}
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
                if isinstance(result, Held):
                    failures.pop(port, None)
                    retry_at.pop(port, None)
                    if result.mapping.external_port != m.external_port:
                        ledger.note(f"{NAMES[m.protocol]}: renewal moved TCP {port} to external "
                                    f"port {result.mapping.external_port}")
                    with ledger.lock:
                        ledger.held[port] = result
                    continue
                failures[port] = failures.get(port, 0) + 1
                retry_at[port] = time.monotonic() + min(5.0 * 2 ** (failures[port] - 1), 300.0)
                failed.setdefault((m.protocol, result.text), []).append(port)
                if time.monotonic() > held.granted_at + m.lifetime:
                    expired.append(port)
                    with ledger.lock:
                        ledger.held.pop(port, None)
                        ledger.failures[port] = f"expired: {result.text}"
                    failures.pop(port, None)
                    retry_at.pop(port, None)
            for (protocol, why), ports in failed.items():
                gone = [p for p in ports if p in expired]
                ledger.note(f"{NAMES[protocol]}: renewing TCP {ports_text(ports)} failed: {why}"
                            + (f"; TCP {ports_text(gone)} expired" if gone else ""))
            ledger.update()

    async def _renew(self, port: int) -> tuple[Held | None, Held | Refusal | None]:
        held = self.ledger.held.get(port)
        if held is None:
            return None, None
        m = held.mapping
        # In the background: more patience than the first round, less than the lease.
        deadline = time.monotonic() + max(self.request_timeout, min(PATIENCE, m.lifetime / 4))
        return held, await self._map_one(m.protocol, m.gateway, port, deadline, held)

    # -- removal -------------------------------------------------------------
    def wants(self, protocol: str, gw: str, port: int) -> bool:
        """Whether this engine holds TCP *port* at *gw* by *protocol*, or has
        sent a request that may have mapped it, and is not removing its
        mappings (safe from any thread; asks not sent yet are the hand-over's)."""
        if self.stopping:
            return False
        with self.ledger.lock:
            held = self.ledger.held.get(port)
        if held is not None and (held.mapping.protocol, held.mapping.gateway) == (protocol, gw):
            return True
        driver = self.drivers.get(protocol)
        return driver is not None and driver.wants(gw, port)

    def awaiting_answers(self) -> bool:
        """Whether a mapping request waits for an answer that removal could
        not replace (a UPnP one: the port may be another host's)."""
        return any(driver.awaiting_answer() for driver in self.drivers.values())

    async def remove_all(self, timeout: float = 1.0) -> None:
        """Remove every mapping made or possibly made (idempotent, bounded by
        *timeout*), and wait for the router to confirm: held ones, and
        requests sent whose answer never came (each driver knows how to
        remove those harmlessly, see :meth:`~.driver.Driver.remove_unanswered`).
        Requests still in flight that removal could not replace are given
        part of the time to finish by :class:`~.client.PortMapper` first.  A
        port that another engine of this process holds or asks for too (the
        ports rolled) is left to it, and one it asks for while we remove it
        waits until our removal has ended (:mod:`.handover`)."""
        deadline = time.monotonic() + timeout
        self.stopping = True
        with self.ledger.lock:
            held = list(self.ledger.held.values())
            self.ledger.held.clear()
        claims = Claims(HANDOVER, self)

        def ours(key: Key) -> bool:
            """Whether to remove it: PCP's (by nonce, ours alone), or one that no
            other engine wants (claimed until its removal ends)."""
            return not self.drivers[key[0]].removes_by_port or claims.claim(key)

        removals, what, left = [], [], []
        done_keys = set()
        try:
            for h in held:
                m = h.mapping
                key = (m.protocol, m.gateway, m.internal_port)
                done_keys.add(key)
                if ours(key):
                    removal = self.drivers[m.protocol].delete(h, deadline)
                    removals.append(claims.removing(key, removal))
                    what.append(m)
                else:
                    left.append(m)
            unsure = []
            for protocol, driver in self.drivers.items():
                def skip(gw: str, port: int, protocol: str = protocol) -> bool:
                    return (protocol, gw, port) in done_keys or not ours((protocol, gw, port))
                unsure += driver.remove_unanswered(skip, deadline)
            if left:
                self.ledger.note(f"{NAMES[left[0].protocol]}: TCP "
                                 f"{ports_text(sorted(m.internal_port for m in left))} left "
                                 "mapped for the other mapper that holds or asks for them too")
            if not removals and not unsure:
                return
            results = await asyncio.gather(*removals, *(removal for _, removal in unsure),
                                           return_exceptions=True)
            self.ledger.summarise_removal(zip(what, results[:len(removals)]),
                                          zip((port for port, _ in unsure),
                                              results[len(removals):]))
        finally:
            # what requests whose answer never came may have mapped: released
            # once all removals are over (a driver names their port, not the key)
            claims.release_all()
