"""The article's ports, held open by sentinels and tried by probes.

The article ("A most elegant TCP hole punching algorithm") has both sides
wait for a rendezvous and then send SYNs from every candidate port to the
same port on the peer, hoping they cross.  That fails when a SYN reaches the
far router before the far side has sent its own: a router that answers with
a reset kills the attempt and, for about ten seconds, the mapping on that
port.  Here nobody waits for a rendezvous.

*Sentinels.*  On every active port there is, at all times, one socket in
SYN_SENT towards the same port on the peer.  Its SYN leaves with a small
TTL, found for this path by :mod:`punchcat.traverse.hops` (2 behind one
NAT, 3 behind two): it opens our own NATs' mappings for the peer but dies
in the network before it can provoke the far router (the STUNT technique).
Right after the SYN has left, the socket's TTL is raised again, so that
when the peer's SYN arrives through the mapping, the simultaneous open
answers it at full TTL with the same sequence number as our SYN, which is
what a NAT's connection tracking expects.  (A listening socket would answer
with a new sequence number, and Linux conntrack drops that answer.)  The
ICMP time-exceeded that the small TTL provokes would abort a socket in
SYN_SENT; :func:`punchcat.sockopts.arm_sentinel` makes the kernel ignore it
(IP_MINTTL; for IPv6 a minimum hop count of 255 for a moment after the SYN,
lifted once the error can no longer come).  Closing a socket in SYN_SENT
sends nothing.

*Probes* and the sentinels' pace: :mod:`punchcat.traverse.timing`.  The
ports: :mod:`punchcat.traverse.candidates`.
"""

from __future__ import annotations

import errno
import random
import selectors
import socket

from .. import sockopts
from . import Registration
from .candidates import ArticlePorts, warn_foreign_port
from .diagnosis import Observations
from .hops import HopsResult
from .tidy import Tidy
from .timing import Arm, SentinelSchedule


class SentinelPunch:
    """Sentinels on every active port and spread-out probes (module docstring)."""

    def __init__(self, family: int, peer: str, candidates: ArticlePorts, route: HopsResult,
                 reporter, observations: Observations, rng: random.Random | None = None):
        self.family = family
        self.peer = peer
        self.candidates = candidates
        self.route = route
        self.reporter = reporter
        self.seen = observations
        self.rng = rng or random.SystemRandom()
        self.socks: dict[int, socket.socket] = {}     # port -> its current socket
        self.probing: set[int] = set()                # ports whose socket is a probe
        self.guarded: dict[int, float] = {}           # IPv6: port -> when to lift the guard
        self.unbindable: set[int] = set()
        self.schedule: SentinelSchedule | None = None
        self.sel: selectors.BaseSelector | None = None
        self.foreign_users: set[int] = set()   # other users seen on our ports (warned)

    # -- the Technique interface --------------------------------------------
    def start(self, sel: selectors.BaseSelector, now: float) -> None:
        self.sel = sel
        self.schedule = SentinelSchedule(now, self.rng)
        self.tick(now)

    def wakeup(self) -> float:
        return min(self.candidates.next_roll, self.schedule.wakeup(), *self.guarded.values())

    def tick(self, now: float) -> None:
        if self.candidates.roll(now):
            wanted = [n for n in self.candidates.ports if n not in self.unbindable]
            for port in self.schedule.set_ports(wanted):
                self._drop(port)
            self.seen.ports = len(self.schedule.ports)
        for port in [p for p, t in self.guarded.items() if t <= now]:
            del self.guarded[port]
            sockopts.lift_guard(self.socks[port])
        for action in self.schedule.due(now):
            self._arm(action, now)

    def ready(self, port: int, sock: socket.socket, now: float) -> socket.socket | None:
        if self.socks.get(port) is not sock:
            return None
        err = sockopts.connect_result(sock)
        if err is None:
            return None                  # spurious wakeup, still connecting
        if err == 0:
            self._drop(port, close=False)
            self.schedule.connected(port, now)
            sockopts.settle(sock)
            return sock
        full = port in self.probing
        self._drop(port)
        refused = err in (errno.ECONNREFUSED, errno.ECONNRESET)
        if refused:
            if full:
                self.seen.refused += 1
            else:
                self.seen.sentinel_refused += 1
        elif err != errno.ETIMEDOUT:
            if full:
                self.seen.unreachable += 1
            else:
                self.seen.sentinel_unreachable += 1
        elif full:
            self.seen.silent += 1
        self.schedule.ended(port, now, refused)
        return None

    def pause(self, now: float) -> None:
        self.schedule.pause(now)

    def status(self) -> str:
        return f"{len(self.schedule.ports)} ports"

    def finish(self, leader: bool) -> Tidy:
        """Hand the sentinels still out to a :class:`Tidy` (see its module)."""
        held = {}
        for port, sock in list(self.socks.items()):
            self.sel.unregister(sock)
            if port in self.guarded:
                sockopts.lift_guard(sock)
            held[port] = self.socks.pop(port)
        self.guarded.clear()
        self.probing.clear()
        return Tidy(self.family, self.peer, held, leader)

    def close(self) -> None:
        for port in list(self.socks):
            self._drop(port)

    # -- internals ----------------------------------------------------------
    def _arm(self, action: Arm, now: float) -> None:
        """Replace the port's socket by a new one and send its SYN."""
        port = action.port
        if port not in self.schedule.ports:
            return                       # given up by an earlier action of this batch
        if port in self.probing:
            self.seen.silent += 1        # the previous probe got no answer in time
        self._drop(port)
        try:
            sock = sockopts.punch_socket(self.family, port)
        except OSError:
            # In use by another program: give the port up for this run.
            self.unbindable.add(port)
            self.schedule.forget(port)
            self.seen.ports = len(self.schedule.ports)
            self.seen.unbindable = len(self.unbindable)
            self.reporter.info(f"port {port} is in use here, skipped")
            warn_foreign_port(self.reporter, port, self.foreign_users)
            return
        ttl = None if action.full else self.route.ttl_for(port)
        guarded = ttl is not None and sockopts.arm_sentinel(sock, ttl)
        err = sock.connect_ex((self.peer, port))
        if err not in sockopts.CONNECTING:
            # e.g. EADDRNOTAVAIL: the 4-tuple is still in TIME_WAIT here;
            # ENETUNREACH: this host has no route (said first on failure).
            sock.close()
            self.seen.local_error(err)
            self.schedule.arm_failed(port, now)
            return
        if action.full:
            self.seen.probes += 1
        else:
            sockopts.set_ttl(sock, -1)
        self.socks[port] = sock
        if action.full:
            self.probing.add(port)
        if guarded and self.family == socket.AF_INET6:
            self.guarded[port] = now + self.route.guard(ttl)
        self.sel.register(sock, selectors.EVENT_WRITE, Registration(self, port))

    def _drop(self, port: int, close: bool = True) -> None:
        self.probing.discard(port)
        self.guarded.pop(port, None)
        sock = self.socks.pop(port, None)
        if sock is None:
            return
        self.sel.unregister(sock)
        if close:
            sock.close()                 # in SYN_SENT this sends nothing
