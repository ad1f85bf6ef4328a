"""The article's ports, held open by sentinels and tried by probes.

The article ("A most elegant TCP hole punching algorithm") has both sides
wait for a rendezvous and then send SYNs from every candidate port to the
same port on the peer, hoping they cross.  That fails when a SYN reaches the
far router before the far side has sent its own: a router that answers with
a reset kills the attempt and, for about ten seconds, the mapping on that
port.  Here nobody waits for a rendezvous.

*Sentinels.*  On every active port there is, at all times, one socket in
SYN_SENT towards the same port on the peer.  Its SYN leaves with a small
TTL (:data:`LOW_TTL`): it opens our own NAT's mapping for the peer but dies
in the network before it can provoke the far router (the STUNT technique).
Right after the SYN has left, the socket's TTL is raised again, so that
when the peer's SYN arrives through the mapping, the simultaneous open
answers it at full TTL with the same sequence number as our SYN, which is
what a NAT's connection tracking expects.  (A listening socket would answer
with a new sequence number, and Linux conntrack drops that answer.)  The
ICMP time-exceeded that the small TTL provokes would abort a socket in
SYN_SENT; IP_MINTTL makes the kernel ignore ICMP errors about packets that
had less TTL left than that, so the sentinel survives it.  Closing a socket
in SYN_SENT sends nothing.

*Probes* and the sentinels' pace: :mod:`punchcat.traverse.timing`.

*Buckets.*  The ports are those of the article's buckets that a peer whose
clock is within the clock error of ours may be using
(:func:`punchcat.schedule.active_ports`); they roll with the clock, so a
peer that starts minutes later still finds us.
"""

from __future__ import annotations

import errno
import os
import random
import selectors
import socket
from typing import Callable

from .. import sockopts
from ..schedule import active_ports
from . import Registration
from .diagnosis import Observations
from .timing import Arm, SentinelSchedule

#: TTL of a sentinel's SYN: past our own NAT (hop 1), dead at the next router.
LOW_TTL = 2
#: How often the active ports are recomputed from the clock.
ROLL_INTERVAL = 1.0


class SentinelPunch:
    """Sentinels on every active port and spread-out probes (module docstring)."""

    def __init__(self, family: int, peer: str, clock: Callable[[], float],
                 clock_error: float, run_window: float, count: int, reporter,
                 observations: Observations, rng: random.Random | None = None):
        self.family = family
        self.peer = peer
        self.clock = clock
        self.clock_error = clock_error
        self.run_window = run_window
        self.count = count
        self.reporter = reporter
        self.seen = observations
        self.rng = rng or random.SystemRandom()
        self.socks: dict[int, socket.socket] = {}     # port -> its current socket
        self.unbindable: set[int] = set()
        self.buckets: list[int] = []
        self.schedule: SentinelSchedule | None = None
        self.sel: selectors.BaseSelector | None = None
        self.next_roll = 0.0
        self.min_ttl_works = True
        self.foreign_users: set[int] = set()   # other users seen on our ports (warned)

    # -- the Technique interface --------------------------------------------
    def start(self, sel: selectors.BaseSelector, now: float) -> None:
        self.sel = sel
        self.schedule = SentinelSchedule(now, self.rng)
        self.tick(now)

    def wakeup(self) -> float:
        return min(self.next_roll, self.schedule.wakeup())

    def tick(self, now: float) -> None:
        if now >= self.next_roll:
            self._roll(now)
        for action in self.schedule.due(now):
            self._arm(action, now)

    def ready(self, port: int, sock: socket.socket, now: float) -> socket.socket | None:
        if self.socks.get(port) is not sock:
            return None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                sock.getpeername()
            except OSError:
                return None              # spurious wakeup, still connecting
            self._drop(port, close=False)
            self.schedule.connected(port, now)
            sockopts.settle(sock)
            return sock
        self._drop(port)
        refused = err == errno.ECONNREFUSED
        if refused and self.schedule.ports[port].full:
            self.seen.refused += 1
        self.schedule.ended(port, now, refused)
        return None

    def pause(self, now: float) -> None:
        self.schedule.pause(now)

    def status(self) -> str:
        return f"{len(self.schedule.ports)} ports"

    def close(self) -> None:
        for port in list(self.socks):
            self._drop(port)

    # -- internals ----------------------------------------------------------
    def _roll(self, now: float) -> None:
        """Follow the clock: open the ports of new buckets, retire old ones."""
        self.next_roll = now + ROLL_INTERVAL
        wanted = active_ports(self.clock(), self.clock_error, self.run_window, self.count)
        buckets = sorted(set(wanted.values()))
        if buckets == self.buckets:
            return
        self.buckets = buckets
        for port in self.schedule.set_ports(n for n in wanted if n not in self.unbindable):
            self._drop(port)
        self.seen.ports = len(self.schedule.ports)
        self.reporter.info(f"buckets {' '.join(map(str, buckets))}: "
                           f"ports {' '.join(map(str, sorted(self.schedule.ports)))}")

    def _arm(self, action: Arm, now: float) -> None:
        """Replace the port's socket by a new one and send its SYN."""
        port = action.port
        if port not in self.schedule.ports:
            return                       # given up by an earlier action of this batch
        self._drop(port)
        try:
            sock = sockopts.punch_socket(self.family, port)
        except OSError:
            # In use by another program: give the port up for this run.
            self.unbindable.add(port)
            self.schedule.forget(port)
            self.seen.ports = len(self.schedule.ports)
            self.reporter.info(f"port {port} is in use here, skipped")
            warn_foreign_port(self.reporter, port, self.foreign_users)
            return
        if not action.full:
            sockopts.set_ttl(sock, LOW_TTL)
            if self.min_ttl_works:
                self.min_ttl_works = sockopts.set_min_ttl(sock, LOW_TTL)
        err = sock.connect_ex((self.peer, port))
        if not action.full:
            sockopts.set_ttl(sock, -1)
        if err not in (0, errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            # e.g. EADDRNOTAVAIL: the 4-tuple is still in TIME_WAIT here.
            sock.close()
            self.schedule.arm_failed(port, now)
            return
        self.socks[port] = sock
        self.sel.register(sock, selectors.EVENT_WRITE, Registration(self, port))

    def _drop(self, port: int, close: bool = True) -> None:
        sock = self.socks.pop(port, None)
        if sock is None:
            return
        self.sel.unregister(sock)
        if close:
            sock.close()                 # in SYN_SENT this sends nothing


def warn_foreign_port(reporter, port: int, warned: set[int]) -> None:
    """Say, without -v, that another user holds a candidate port: someone on
    this host may be waiting to take the peer's connection (issue 15).
    Once per user; the ports after the first are said with -v."""
    others = sockopts.port_owners(port) - {os.geteuid()}
    if others - warned:
        reporter.warning(
            f"candidate port {port} is held by another user here (uid "
            f"{', '.join(map(str, sorted(others)))}): another program, or someone trying to "
            f"take this connection; without a secret the peer cannot tell them from you")
        warned |= others
