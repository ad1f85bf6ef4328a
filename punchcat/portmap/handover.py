"""The hand-over between the port mappers of one process.

When the clock rolls the candidate ports, punchcat closes the mapper of the
old set as it starts one for the new set (:mod:`..traverse.mapped`), and
half the ports are in both.  NAT-PMP and UPnP remove a port whoever asked
for it, so two rules keep forwarded a port the new mapper counts as mapped:

* the old mapper removes a port only if no other mapper wants it (holds it,
  asks for it, or sent a request that may have mapped it);
* a removal goes first: a request for a port that is being removed waits
  until the removal has ended (confirmed, refused or given up).

Deciding is not sending: a removal waits for its turn in the old engine's
window (:mod:`.exchange`; 4 UPnP requests at a time, so the last of 32 go
out after the first are answered) and then for the router, while the new
engine, in a thread of its own, maps the same port through its own window.
Deciding once, at the start of the removal, let the router carry out the
new mapper's AddPortMapping before the old one's DeletePortMapping of that
port: counted as mapped, not forwarded.  So an engine *claims* a port for
removal (:meth:`Handover.claim`) and *asks* for a port (:meth:`Handover.ask`)
under one lock, from the decision until the removal has ended or the answer
is recorded; an ask made while the port is claimed waits, woken through its
own loop.

PCP removes by nonce, only its own mapping: its ports are never claimed.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from dataclasses import dataclass, field
from typing import Awaitable, Protocol

from .exchange import remaining

#: (protocol, gateway, internal port)
Key = tuple[str, str, int]
#: Why a request was not sent: its deadline came while another mapper of
#: this process was still removing the port.
REMOVING = "not asked in time: another mapper of this process was still removing it"


class Mapper(Protocol):
    """What the hand-over needs of an engine."""

    @property
    def stopping(self) -> bool: ...

    def wants(self, protocol: str, gw: str, port: int) -> bool: ...


@dataclass
class _Removal:
    claims: int = 0                  # engines removing the port (two old ones may)
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = field(default_factory=list)


class Handover:
    """The engines of this process, the ports they are asking for and the
    ports being removed; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: "weakref.WeakSet[Mapper]" = weakref.WeakSet()
        self._asks: dict[Key, list[Mapper]] = {}       # one entry an ask
        self._removals: dict[Key, _Removal] = {}

    def join(self, engine: Mapper) -> None:
        with self._lock:
            self._engines.add(engine)

    def _wanted_by_another(self, engine: Mapper, key: Key) -> bool:
        """(with the lock held)"""
        if any(e is not engine and not e.stopping for e in self._asks.get(key, ())):
            return True
        return any(e.wants(*key) for e in self._engines if e is not engine)

    def claim(self, engine: Mapper, key: Key) -> bool:
        """Whether *engine* may remove *key*: no other engine wants it.  If
        so the removal is under way, and asks for *key* wait, until
        :meth:`release`."""
        with self._lock:
            if self._wanted_by_another(engine, key):
                return False
            self._removals.setdefault(key, _Removal()).claims += 1
            return True

    def release(self, key: Key) -> None:
        """A removal claimed with :meth:`claim` has ended."""
        with self._lock:
            removal = self._removals[key]
            removal.claims -= 1
            if removal.claims:
                return
            del self._removals[key]
        for loop, waiter in removal.waiters:
            try:
                loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:        # that engine's loop has ended
                pass

    async def ask(self, engine: Mapper, key: Key, deadline: float) -> bool:
        """Record that *engine* asks for *key*, once no removal of it is
        under way (until :meth:`done_asking`); False if *deadline* came
        first (nothing recorded)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                removal = self._removals.get(key)
                if removal is None:
                    self._asks.setdefault(key, []).append(engine)
                    return True
                waiter = loop.create_future()
                removal.waiters.append((loop, waiter))
            try:
                await asyncio.wait_for(waiter, max(remaining(deadline), 0))
            except asyncio.TimeoutError:
                return False

    def done_asking(self, engine: Mapper, key: Key) -> None:
        """The ask recorded by :meth:`ask` is over (its answer recorded)."""
        with self._lock:
            asks = self._asks[key]
            asks.remove(engine)
            if not asks:
                del self._asks[key]


class Claims:
    """The ports one removal claimed, each released when its removal ends
    (:meth:`removing`) or, at the latest, by :meth:`release_all`."""

    def __init__(self, handover: Handover, engine: Mapper):
        self.handover = handover
        self.engine = engine
        self.keys: set[Key] = set()

    def claim(self, key: Key) -> bool:
        """:meth:`Handover.claim`, remembered."""
        if not self.handover.claim(self.engine, key):
            return False
        self.keys.add(key)
        return True

    async def removing(self, key: Key, removal: Awaitable[bool]) -> bool:
        """Await *removal* of *key*, then release the claim."""
        try:
            return await removal
        finally:
            self.release(key)

    def release(self, key: Key) -> None:
        if key in self.keys:
            self.keys.discard(key)
            self.handover.release(key)

    def release_all(self) -> None:
        for key in list(self.keys):
            self.release(key)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


#: This process's.
HANDOVER = Handover()
