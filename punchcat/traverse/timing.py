"""When each candidate port gets a new sentinel and which port is probed next.

Pure: fed the time and what happened to the sockets, it answers with
:class:`Arm` actions; :mod:`punchcat.traverse.sentinel` carries them out.
Tested with a fake clock.

*Sentinels.*  Every port holds one socket whose SYN left at a small TTL; it
is replaced every :data:`RECYCLE` seconds, before the kernel would
retransmit its SYN at full TTL.

*Probes.*  A probe is a full-TTL SYN on one port.  The peer that starts
later is the one whose probes find sentinels waiting, so each side probes
mostly while it is new: a burst on :data:`BURST` ports :data:`BURST_DELAY`
after its sentinels are out (a peer that started just before us has its own
sentinels out by then), then one port every :data:`PROBE_INTERVAL` seconds,
in a random order of its own, for :data:`PROBE_WINDOW` seconds; after that
one every :data:`SLOW_PROBE_INTERVAL` seconds, to recover should every early
probe have failed.  A port is probed again no sooner than
:data:`PROBE_SPACING` (a reset's damage to the mapping lasts about ten
seconds), and no port is probed for :data:`PROBE_PAUSE` after a connection
completed: the peer is there, and a probe that reaches its router after it
closed its sentinels leaves a half-open entry that spoils the port for the
next session.
"""

from __future__ import annotations

import random
from typing import Iterable, NamedTuple

#: Replace a sentinel after this long, before the kernel retransmits (1 s).
RECYCLE = 0.8
#: Full-TTL probes at start (BURST_DELAY after the sentinels), then one
#: every PROBE_INTERVAL seconds.
BURST = 8
BURST_DELAY = 0.05
PROBE_INTERVAL = 0.5
#: A port is probed again no sooner than this.
PROBE_SPACING = 11.0
#: After a port's socket was handed over (or could not connect), wait this
#: long before arming it again.
HANDED_OVER_PAUSE = 5.0
#: No probes for this long after a connection completed.
PROBE_PAUSE = 2.0
#: Probes every PROBE_INTERVAL in this many seconds after the start, then
#: only every SLOW_PROBE_INTERVAL.
PROBE_WINDOW = 8.0
SLOW_PROBE_INTERVAL = 3.0


class Arm(NamedTuple):
    """Replace *port*'s socket by a new one and send its SYN: a sentinel, or a
    probe when *full* (full TTL)."""

    port: int
    full: bool


class _Port:
    __slots__ = ("armed", "full", "born", "next_arm", "probed")

    def __init__(self):
        self.armed = False           # a socket is out, its SYN sent
        self.full = False            # ... at full TTL
        self.born = 0.0
        self.next_arm = 0.0          # when the next socket may be created
        self.probed = -PROBE_SPACING


class SentinelSchedule:
    """Sentinel and probe timing for a set of ports (see the module docstring)."""

    def __init__(self, now: float, rng: random.Random):
        self.rng = rng
        self.started = now
        self.ports: dict[int, _Port] = {}
        self.order: list[int] = []          # our own random probing order
        self.burst_pending = True
        self.next_probe = now + BURST_DELAY

    # -- the set of ports ------------------------------------------------
    def set_ports(self, numbers: Iterable[int]) -> list[int]:
        """Hold these ports from now on; returns the ports given up."""
        wanted = list(dict.fromkeys(numbers))
        gone = [n for n in self.ports if n not in wanted]
        for number in gone:
            self.forget(number)
        fresh = [n for n in wanted if n not in self.ports]
        for number in fresh:
            self.ports[number] = _Port()
        self.rng.shuffle(fresh)
        self.order += fresh
        return gone

    def forget(self, number: int) -> None:
        """Give a port up (e.g. another program uses it)."""
        if self.ports.pop(number, None) is not None:
            self.order.remove(number)

    # -- what is due -----------------------------------------------------
    def due(self, now: float) -> list[Arm]:
        """The sockets to (re)create now, in order; each is taken as done."""
        actions = []
        for number, port in self.ports.items():
            if now >= (port.born + RECYCLE if port.armed else port.next_arm):
                actions.append(self._arm(number, port, now, full=False))
        if self.burst_pending:
            if now >= self.next_probe:
                self.burst_pending = False
                for number in self.order[:BURST]:
                    actions.append(self._probe(number, now))
                self.next_probe = now + PROBE_INTERVAL
        elif now >= self.next_probe:
            slow = now >= self.started + PROBE_WINDOW
            self.next_probe = now + (SLOW_PROBE_INTERVAL if slow else PROBE_INTERVAL)
            number = self._next_to_probe(now)
            if number is not None:
                actions.append(self._probe(number, now))
        return actions

    def wakeup(self) -> float:
        pending = [p.born + RECYCLE if p.armed else p.next_arm for p in self.ports.values()]
        return min([self.next_probe, *pending])

    # -- what happened to a socket ---------------------------------------
    def arm_failed(self, number: int, now: float) -> None:
        """The socket could not send its SYN (e.g. the 4-tuple in TIME_WAIT)."""
        self._ended(number, now + HANDED_OVER_PAUSE)

    def ended(self, number: int, now: float, refused: bool) -> None:
        """The socket's attempt ended without a connection.  *refused*: a reset
        answered it."""
        port = self.ports.get(number)
        if port is None:
            return
        if refused and port.full:
            # The far router answered our probe: the peer is not there (yet).
            # Our mapping is closing; reopen it at once.
            self._ended(number, now)
        else:
            # A sentinel's end (timeout), or an ICMP error where IP_MINTTL is
            # missing: the next sentinel at the usual pace.
            self._ended(number, max(now, port.born + RECYCLE))

    def connected(self, number: int, now: float) -> None:
        """The socket's connection completed; it was handed over."""
        self._ended(number, now + HANDED_OVER_PAUSE)
        self.pause(now)

    def pause(self, now: float) -> None:
        """A connection completed: no probes for a while."""
        self.next_probe = max(self.next_probe, now + PROBE_PAUSE)

    # -- internals -------------------------------------------------------
    def _ended(self, number: int, next_arm: float) -> None:
        port = self.ports.get(number)
        if port is not None:
            port.armed = False
            port.next_arm = next_arm

    def _arm(self, number: int, port: _Port, now: float, full: bool) -> Arm:
        port.armed, port.full, port.born = True, full, now
        return Arm(number, full)

    def _probe(self, number: int, now: float) -> Arm:
        port = self.ports[number]
        port.probed = now
        return self._arm(number, port, now, full=True)

    def _next_to_probe(self, now: float) -> int | None:
        for _ in range(len(self.order)):
            number = self.order.pop(0)
            self.order.append(number)
            port = self.ports[number]
            if now - port.probed >= PROBE_SPACING and (port.armed or now >= port.next_arm):
                return number
        return None
