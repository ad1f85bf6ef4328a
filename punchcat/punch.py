"""Sockets that punch TCP connections through both NATs (sockets, selectors).

Theory of operation
-------------------
The article binds one socket per candidate port and, at the rendezvous,
connects it to the same port on the peer: the SYNs cross, each opens its own
NAT's mapping, and TCP's simultaneous open completes the connection.  That
needs the two sides to fire within the same moment, and fails when a SYN
reaches the far router before the far side has sent its own: a router that
answers with a reset kills the attempt and, for about ten seconds, the
mapping on that port.  Here nobody waits for a rendezvous.

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
had less TTL left than that, so the sentinel survives it.  A sentinel is
replaced every :data:`RECYCLE` seconds, before the kernel would retransmit
its SYN at full TTL; closing a socket in SYN_SENT sends nothing.

*Probes.*  A probe is a full-TTL SYN on one port: it reaches the far router
and, if the peer holds a sentinel there, completes at once.  The peer that
starts later is the one whose probes find sentinels waiting, so each side
probes mostly while it is new: a burst on :data:`BURST` ports right after
its sentinels are out, then one port every :data:`PROBE_INTERVAL` seconds, in
a random order of its own, for :data:`PROBE_WINDOW` seconds; after that only
one every :data:`SLOW_PROBE_INTERVAL` seconds, to recover should every early
probe have failed.  Probes that reach a peer that is not
running yet are worse than useless: a filtering router answers them with a
reset, and a router that still tracks the peer's previous session forwards
them to a host with no socket for them, which leaves a half-open entry that
spoils the port for the next session (measured: chains of sessions between
the same hosts slowed down to ten seconds and more).

*Buckets.*  The ports are those of the article's buckets that a peer whose
clock is within the clock error of ours may be using
(:func:`punchcat.schedule.active_buckets`); they roll with the clock, so a
peer that starts minutes later still finds us.

The puncher is driven by :func:`punchcat.handshake.establish`: it registers
its sockets in the caller's selector, is told of their events, and hands
over each socket whose connection completed.
"""

from __future__ import annotations

import errno
import random
import selectors
import socket
import time
from typing import Callable

from .schedule import active_ports

#: TTL of a sentinel's SYN: past our own NAT (hop 1), dead at the next router.
LOW_TTL = 2
#: Replace a sentinel after this long, before the kernel retransmits (1 s).
RECYCLE = 0.8
#: Full-TTL probes at start (BURST_DELAY after the sentinels), then one
#: every PROBE_INTERVAL seconds.
BURST = 8
BURST_DELAY = 0.05
PROBE_INTERVAL = 0.5
#: A port is probed again no sooner than this (a reset's mapping damage lasts ~10 s).
PROBE_SPACING = 11.0
#: How often the active ports are recomputed from the clock.
ROLL_INTERVAL = 1.0
#: After a port's socket was handed over, wait this long before arming it again.
HANDED_OVER_PAUSE = 5.0
#: No probes for this long after a connection completed (see Puncher.handle).
PROBE_PAUSE = 2.0
#: Probes every PROBE_INTERVAL in this many seconds after the start, then only
#: every SLOW_PROBE_INTERVAL (see the module docstring).
PROBE_WINDOW = 8.0
SLOW_PROBE_INTERVAL = 3.0

IP_MINTTL = getattr(socket, "IP_MINTTL", 21)            # Linux value
IPV6_MINHOPCOUNT = getattr(socket, "IPV6_MINHOPCOUNT", 73)
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


def bound_socket(family: int, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to *port* on every local address."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _set_ttl(sock: socket.socket, family: int, ttl: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def _set_min_ttl(sock: socket.socket, family: int, ttl: int) -> bool:
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MINHOPCOUNT, ttl)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MINTTL, ttl)
        return True
    except OSError:
        return False


def settle(sock: socket.socket, family: int) -> None:
    """Undo the punching options on a socket whose connection completed."""
    _set_ttl(sock, family, -1)          # -1: back to the system default
    _set_min_ttl(sock, family, 0)
    if TCP_USER_TIMEOUT is not None:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, 0)


class _Port:
    """One candidate port: its current socket and when it was last probed."""

    __slots__ = ("number", "sock", "full", "born", "next_arm", "probed", "refusals")

    def __init__(self, number: int):
        self.number = number
        self.sock: socket.socket | None = None
        self.full = False            # the current socket's SYN went out at full TTL
        self.born = 0.0
        self.next_arm = 0.0          # when the next socket may be created
        self.probed = -PROBE_SPACING
        self.refusals = 0


class Puncher:
    """Sentinels on every active port and spread-out probes (module docstring)."""

    def __init__(self, family: int, peer: str, clock: Callable[[], float],
                 clock_error: float, run_window: float, count: int, reporter,
                 deadline: float, rng: random.Random | None = None):
        self.family = family
        self.peer = peer
        self.clock = clock
        self.clock_error = clock_error
        self.run_window = run_window
        self.count = count
        self.reporter = reporter
        self.deadline = deadline
        self.rng = rng or random.SystemRandom()
        self.ports: dict[int, _Port] = {}
        self.order: list[int] = []        # our own random probing order
        self.unbindable: set[int] = set()
        self.buckets: list[int] = []
        self.sel: selectors.BaseSelector | None = None
        self.next_roll = 0.0
        self.started = 0.0
        self.burst_pending = False
        self.next_probe = 0.0
        self.next_status = 0.0
        self.refused = 0
        self.connections = 0
        self.min_ttl_works = True

    # -- driven by handshake.establish -------------------------------------
    def start(self, sel: selectors.BaseSelector) -> None:
        self.sel = sel
        now = time.monotonic()
        self.started = now
        self._roll(now)
        for port in list(self.ports.values()):
            self._arm(port, now)
        # The burst a moment after our sentinels: a peer that started just
        # before us has its own sentinels out by then.
        self.burst_pending = True
        self.next_probe = now + BURST_DELAY

    def wakeup(self) -> float:
        pending = [p.next_arm if p.sock is None else p.born + RECYCLE
                   for p in self.ports.values()]
        return min([self.next_roll, self.next_probe, self.next_status, *pending])

    def tick(self) -> list[socket.socket]:
        """Recycle sentinels and send probes that are due."""
        now = time.monotonic()
        if now >= self.next_roll:
            self._roll(now)
        for port in list(self.ports.values()):
            if port.sock is None:
                if now >= port.next_arm:
                    self._arm(port, now)
            elif now >= port.born + RECYCLE:
                self._drop_socket(port)
                self._arm(port, now)
        if self.burst_pending and now >= self.next_probe:
            self.burst_pending = False
            for number in self.order[:BURST]:
                if number in self.ports:
                    self._probe(self.ports[number], now)
            self.next_probe = now + PROBE_INTERVAL
        elif now >= self.next_probe:
            slow = now >= self.started + PROBE_WINDOW
            self.next_probe = now + (SLOW_PROBE_INTERVAL if slow else PROBE_INTERVAL)
            port = self._next_to_probe(now)
            if port is not None:
                self._probe(port, now)
        if now >= self.next_status:
            self.next_status = now + 1.0
            self.reporter.status(f"punchcat: waiting for {self.peer} on {len(self.ports)} ports: "
                                 f"{max(0.0, self.deadline - now):.0f} s left")
        return []

    def handle(self, key: selectors.SelectorKey) -> list[socket.socket]:
        port: _Port = key.data
        sock = key.fileobj
        if port.sock is not sock:
            return []
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        now = time.monotonic()
        if err == 0:
            try:
                sock.getpeername()
            except OSError:
                return []                # spurious wakeup, still connecting
            self._drop_socket(port, close=False)
            port.next_arm = now + HANDED_OVER_PAUSE
            settle(sock, self.family)
            self.connections += 1
            # The peer is here and the election is about to end: hold the
            # probes.  A probe that reaches the peer's router after the peer
            # has closed its sentinels leaves there a half-open entry that
            # spoils the port for the next session (measured: such entries
            # piled up and slowed chains of sessions to seconds).
            self.next_probe = max(self.next_probe, now + PROBE_PAUSE)
            return [sock]
        self._drop_socket(port)
        if err == errno.ECONNREFUSED and port.full:
            # The far router answered our probe with a reset: the peer is not
            # there (yet).  Our mapping is closing; reopen it at once.
            self.refused += 1
            port.refusals += 1
            port.next_arm = now
        else:
            # A sentinel's end (timeout), or an ICMP error where IP_MINTTL is
            # missing: the next sentinel at the usual pace.
            port.next_arm = max(now, port.born + RECYCLE)
        return []

    def close(self) -> None:
        for port in self.ports.values():
            self._drop_socket(port)
        self.reporter.clear()

    def failure_hint(self) -> str:
        if not self.ports:
            return (f"no connection to {self.peer}: none of the candidate ports "
                    f"could be bound here")
        heard = (f"; its router answered {self.refused} probes with a reset, so it is "
                 f"reachable" if self.refused else "")
        family = "IPv6" if self.family == socket.AF_INET6 else "IPv4"
        return (f"no connection to {self.peer}: is punchcat running there, pointed at this "
                f"host's public {family} address, with a clock within "
                f"{2 * self.clock_error:g} s of this one{heard}? Both NATs must preserve "
                f"source ports; a NAT that randomises them cannot be punched")

    # -- internals ---------------------------------------------------------
    def _roll(self, now: float) -> None:
        """Follow the clock: open the ports of new buckets, retire old ones."""
        self.next_roll = now + ROLL_INTERVAL
        wanted = active_ports(self.clock(), self.clock_error, self.run_window, self.count)
        buckets = sorted(set(wanted.values()))
        if buckets == self.buckets:
            return
        self.buckets = buckets
        for number in [n for n in self.ports if n not in wanted]:
            self._drop_socket(self.ports.pop(number))
        fresh = [n for n in wanted if n not in self.ports and n not in self.unbindable]
        for number in fresh:
            self.ports[number] = _Port(number)
        self.rng.shuffle(fresh)
        self.order = [n for n in self.order if n in self.ports] + fresh
        self.reporter.info(f"buckets {' '.join(map(str, buckets))}: "
                           f"ports {' '.join(map(str, sorted(self.ports)))}")

    def _next_to_probe(self, now: float) -> _Port | None:
        for _ in range(len(self.order)):
            number = self.order.pop(0)
            self.order.append(number)
            port = self.ports[number]
            if now - port.probed >= PROBE_SPACING and (port.sock is not None
                                                       or now >= port.next_arm):
                return port
        return None

    def _probe(self, port: _Port, now: float) -> None:
        self._drop_socket(port)
        port.probed = now
        self._arm(port, now, full=True)

    def _arm(self, port: _Port, now: float, full: bool = False) -> None:
        """Create the port's next socket and send its SYN."""
        try:
            sock = bound_socket(self.family, port.number)
        except OSError:
            # In use by another program: give the port up for this run.
            self.unbindable.add(port.number)
            del self.ports[port.number]
            self.order.remove(port.number)
            self.reporter.info(f"port {port.number} is in use here, skipped")
            return
        if TCP_USER_TIMEOUT is not None:
            # The kernel gives up at its first retransmission (1 s) instead
            # of re-sending the SYN; our own recycling normally comes first.
            sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, 100)
        if not full:
            _set_ttl(sock, self.family, LOW_TTL)
            if self.min_ttl_works:
                self.min_ttl_works = _set_min_ttl(sock, self.family, LOW_TTL)
        err = sock.connect_ex((self.peer, port.number))
        if not full:
            _set_ttl(sock, self.family, -1)
        port.born, port.full = now, full
        if err not in (0, errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            # e.g. EADDRNOTAVAIL: the 4-tuple is still in TIME_WAIT here.
            sock.close()
            port.next_arm = now + HANDED_OVER_PAUSE
            return
        port.sock = sock
        self.sel.register(sock, selectors.EVENT_WRITE, port)

    def _drop_socket(self, port: _Port, close: bool = True) -> None:
        if port.sock is None:
            return
        self.sel.unregister(port.sock)
        if close:
            port.sock.close()        # in SYN_SENT this sends nothing
        port.sock = None
