"""The random-port fallback: a birthday meeting when one NAT randomises ports.

Theory of operation
-------------------
The article's punch needs both NATs to keep the source port: each side's
SYN from port P must arrive from port P.  A NAT that gives every new
connection a random port (carrier-grade NAT, phone hotspots) breaks that;
yet when only one side's NAT does it, the two can still meet:

* the side behind the *randomising* NAT (R) keeps many sentinels, each from
  a random local port toward the peer's port X; each leaves through a fresh
  random port of its NAT, so R's public address now has that many live
  mappings, each waiting for a SYN from the peer's X;
* the side behind the *port-preserving* NAT (S) sends SYNs from its own
  port X to guessed ports of R's public address.  One that lands on a live
  mapping is the reply its sentinel waits for: the simultaneous open
  completes through both NATs, and the election takes it as any other.

With m live mappings among the 64512 ports a NAT picks from, n guesses hit
at least one with probability 1 - e^(-m*n/64512): m = 256 and n = 1000 give
98 %, at 100 guesses a second (rate t: 1 - e^(-0.4 t)).

Neither side knows which it is, so each plays both at once; the wrong
pairing costs only packets.  X is drawn from the article's plan bucket
(the bucket the article's script would use now; it rolls with the clock),
so both sides agree on it without talking.  A sentinel is re-armed on the
*same* local port (same 4-tuple, same connection-tracking entry), so its
random mapping stays put while the fallback runs; it leaves with the
sentinel TTL (:mod:`punchcat.traverse.hops`) and is raised to full TTL
once out, like the article's sentinels.  Guesses go without repeats.

It starts only after :data:`START_AFTER` seconds without a connection, so
pairs that the article's punch connects are not slowed, and stops when a
connection is agreed.  Its cost: about :data:`SENTINELS` + :data:`RATE`
sockets (the soft ``RLIMIT_NOFILE`` is raised toward the hard one when
needed), as many connection-tracking entries in each router, and a burst of
SYNs at the peer's ports that an intrusion detector may call a port scan
(``--no-port-guessing`` turns it off).  IPv4 only: IPv6 has no NAT to
guess around.
"""

from __future__ import annotations

import errno
import random
import resource
import selectors
import socket
from typing import Callable

from .. import sockopts
from ..schedule import plan_bucket, ports_for_bucket
from . import Registration
from .candidates import ArticlePorts
from .diagnosis import Observations
from .hops import HopsResult
from .timing import RECYCLE

#: Seconds without a connection before the fallback starts.
START_AFTER = 3.0
#: Sentinels from random local ports (live mappings on a randomising NAT).
SENTINELS = 256
#: Guesses per second, and how long one may wait for an answer.
RATE = 100.0
GUESS_LIFE = 1.0
#: The ports a NAT picks from (Linux: 1024-65535).
FIRST_PORT = 1024
#: Fewer sentinels than this is not worth it.
MIN_SENTINELS = 32
#: File descriptors kept free for everything else.
FD_RESERVE = 128


def hit_probability(sentinels: int, guesses: int, space: int = 65536 - FIRST_PORT) -> float:
    """The chance that *guesses* distinct guesses meet one of *sentinels* mappings."""
    miss = 1.0
    for i in range(guesses):
        miss *= max(0.0, 1 - sentinels / (space - i))
    return 1 - miss


def meeting_port(bucket: int, count: int, session: bytes = b"") -> int:
    """X: the draw after the bucket's *count* candidate ports."""
    return ports_for_bucket(bucket, count + 1, session)[count]


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward *wanted* (within the hard limit);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class BirthdayPunch:
    """Both halves of the random-port fallback (module docstring)."""

    def __init__(self, family: int, peer: str, candidates: ArticlePorts, route: HopsResult,
                 reporter, observations: Observations, clock: Callable[[], float],
                 rng: random.Random | None = None, start_after: float = START_AFTER,
                 sentinels: int = SENTINELS, rate: float = RATE):
        self.family = family
        self.peer = peer
        self.candidates = candidates
        self.route = route
        self.reporter = reporter
        self.seen = observations
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.start_after = start_after
        self.wanted = sentinels
        self.rate = rate
        self.sel: selectors.BaseSelector | None = None
        self.begin = 0.0
        self.active = False
        self.off = ""                                  # why it cannot run, if so
        self.x = 0                                     # the meeting port
        self.local_ports: list[int] = []               # our sentinels' local ports
        self.sentinels: dict[int, tuple[socket.socket | None, float]] = {}  # port -> (sock, born)
        self.guesses: dict[socket.socket, tuple[int, float]] = {}          # sock -> (port, sent)
        self.order: list[int] = []                     # guesses still to make
        self.next_guess = float("inf")
        self.next_roll = float("inf")
        self.guessed = 0
        self.hits = 0

    # -- the Technique interface --------------------------------------------
    def start(self, sel: selectors.BaseSelector, now: float) -> None:
        self.sel = sel
        self.begin = now + self.start_after

    def wakeup(self) -> float:
        if not self.active:
            return self.begin if not self.off else float("inf")
        rearm = [born + RECYCLE for _, born in self.sentinels.values()]
        expire = [sent + GUESS_LIFE for _, sent in self.guesses.values()]
        return min([self.next_roll, self.next_guess, *rearm, *expire])

    def tick(self, now: float) -> None:
        if self.off or now < self.begin:
            return
        if not self.active:
            self._activate(now)
            if self.off:
                return
        if now >= self.next_roll:
            self._roll(now)
        for port, (sock, born) in list(self.sentinels.items()):
            if now >= born + RECYCLE:
                self._arm_sentinel(port, now)
        for sock, (port, sent) in list(self.guesses.items()):
            if now >= sent + GUESS_LIFE:
                self._drop_guess(sock)
        while self.order and now >= self.next_guess:
            self._guess(self.order.pop(), now)
            self.next_guess += 1 / self.rate
        if not self.order:
            self.next_guess = float("inf")

    def ready(self, tag, sock: socket.socket, now: float) -> socket.socket | None:
        kind, port = tag
        if kind == "sentinel":
            if self.sentinels.get(port, (None,))[0] is not sock:
                return None
        elif sock not in self.guesses:
            return None
        err = sockopts.connect_result(sock)
        if err is None:
            return None                  # still connecting
        if err == 0:
            self.sel.unregister(sock)
            if kind == "sentinel":
                self.sentinels[port] = (None, now)      # re-armed at the usual pace
            else:
                del self.guesses[sock]
            sockopts.settle(sock)
            self.hits += 1
            self.reporter.info(f"random-port fallback: {'a sentinel' if kind == 'sentinel' else 'a guess'} "
                               f"met the peer (port {port})")
            return sock
        if kind == "sentinel":
            self._close_sentinel(port, born=self.sentinels[port][1])
        else:
            self._drop_guess(sock)
        return None

    def pause(self, now: float) -> None:
        pass

    def status(self) -> str:
        if not self.active:
            return "no fallback yet"
        return f"{len(self.sentinels)} random ports, {self.guessed} guesses"

    def finish(self, leader: bool) -> None:
        return None

    def close(self) -> None:
        for port in list(self.sentinels):
            self._close_sentinel(port, born=0.0)
        for sock in list(self.guesses):
            self._drop_guess(sock)
        self.sentinels.clear()

    # -- internals ----------------------------------------------------------
    def _activate(self, now: float) -> None:
        if self.family != socket.AF_INET:
            self.off = "IPv6 has no NAT to guess around"
            return
        in_flight = int(self.rate * GUESS_LIFE) + 16
        limit = raise_fd_limit(self.wanted + in_flight + 2 * len(self.candidates.ports)
                               + FD_RESERVE)
        count = min(self.wanted, limit - in_flight - 2 * len(self.candidates.ports) - FD_RESERVE)
        if count < MIN_SENTINELS:
            self.off = (f"only {limit} file descriptors (ulimit -n); the random-port fallback "
                        f"needs about {self.wanted + in_flight + FD_RESERVE}")
            self.reporter.info(self.off)
            self.seen.notes.append(f"the random-port fallback could not run: {self.off}")
            return
        self.active = True
        self.seen.random_ports = count
        avoid = set(self.candidates.ports)
        while len(self.local_ports) < count:
            port = self.rng.randrange(FIRST_PORT, 65536)
            if port not in avoid:
                avoid.add(port)
                self.local_ports.append(port)
        self.order = list(range(FIRST_PORT, 65536))
        self.rng.shuffle(self.order)
        self._roll(now)
        for port in self.local_ports:
            self.sentinels[port] = (None, now - RECYCLE)     # armed in tick
        self.next_guess = now
        self.reporter.info(
            f"random-port fallback: {count} sentinels from random ports toward port {self.x}, "
            f"guessing the peer's ports from port {self.x} at {self.rate:g}/s "
            f"(an intrusion detector may see a port scan; --no-port-guessing turns it off)")

    def _roll(self, now: float) -> None:
        """X follows the article's plan bucket."""
        self.next_roll = now + 1.0
        bucket, _ = plan_bucket(self.clock(), self.candidates.clock_error,
                                self.candidates.run_window)
        x = meeting_port(bucket, self.candidates.count, self.candidates.session)
        if x != self.x:
            self.x = x
            for port in self.sentinels:                     # retarget at once
                self._close_sentinel(port, born=now - RECYCLE)

    def _arm_sentinel(self, port: int, now: float) -> None:
        self._close_sentinel(port, born=now)
        try:
            sock = sockopts.punch_socket(self.family, port)
        except OSError:
            return                       # busy now; tried again at the next round
        ttl = self.route.ttl_for(port)
        if ttl is not None:
            sockopts.arm_sentinel(sock, ttl)
        err = sock.connect_ex((self.peer, self.x))
        sockopts.set_ttl(sock, -1)
        if err not in sockopts.CONNECTING:
            sock.close()
            self.seen.local_error(err)
            return
        self.sentinels[port] = (sock, now)
        self.sel.register(sock, selectors.EVENT_WRITE, Registration(self, ("sentinel", port)))

    def _close_sentinel(self, port: int, born: float) -> None:
        sock, _ = self.sentinels.get(port, (None, 0.0))
        if sock is not None:
            self.sel.unregister(sock)
            sock.close()                 # in SYN_SENT this sends nothing
        if port in self.sentinels:
            self.sentinels[port] = (None, born)

    def _guess(self, port: int, now: float) -> None:
        try:
            sock = sockopts.punch_socket(self.family, self.x)
        except OSError:
            return
        err = sock.connect_ex((self.peer, port))
        if err not in sockopts.CONNECTING:
            sock.close()
            self.seen.local_error(err)
            return
        self.guessed += 1
        self.seen.guesses += 1
        self.guesses[sock] = (port, now)
        self.sel.register(sock, selectors.EVENT_WRITE, Registration(self, ("guess", port)))

    def _drop_guess(self, sock: socket.socket) -> None:
        if self.guesses.pop(sock, None) is not None:
            self.sel.unregister(sock)
        sock.close()
