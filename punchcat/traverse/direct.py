"""A peer on our own link, or so near that no sentinel fits: a plain simultaneous open.

When hop discovery (:mod:`punchcat.traverse.hops`) finds the peer so close
that no TTL both passes our NATs and dies before the peer's router (two
machines on one LAN, d = 1; one plain router between, d = 2), a sentinel
would reach the peer's host itself.  With no NAT between us, the peer's
kernel answers a SYN on a port where it holds no socket with a reset, so
connecting sockets meet only if their SYNs happen to cross, and sentinels
re-armed out of step never do (measured: two hosts on one link never
connected).

So on every candidate port this technique holds a *listening* socket
(``SO_REUSEPORT``, beside the connecting ones; with no NAT between, its
fresh sequence number troubles nobody), which accepts the peer's SYN at
once, and it *connects* to the peer's same port: to every port at the start
(so the later of the two connects at once, to the earlier one's
listeners), then to one port in turn every :data:`RETRY_INTERVAL` seconds.
A connection accepted from any other address is closed with a reset before
a byte is read.  Nothing here can spoil a NAT mapping: there is none.
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket

from .. import sockopts
from . import Registration
from .candidates import ArticlePorts, warn_foreign_port
from .diagnosis import Observations

#: After the first round, one connect every this many seconds (ports in turn).
RETRY_INTERVAL = 0.5
#: A connect with no answer after this long is given up.
CONNECT_TIMEOUT = 2.0
#: Listening backlog per port.
BACKLOG = 8


class DirectPunch:
    """Listeners and plain connects on the article's ports (module docstring)."""

    def __init__(self, family: int, peer: str, candidates: ArticlePorts, reporter,
                 observations: Observations):
        self.family = family
        self.peer = ipaddress.ip_address(peer)
        self.candidates = candidates
        self.reporter = reporter
        self.seen = observations
        self.listeners: dict[int, socket.socket] = {}
        self.connecting: dict[int, tuple[socket.socket, float]] = {}   # port -> (sock, since)
        self.unbindable: set[int] = set()
        self.foreign_users: set[int] = set()   # other users seen on our ports (warned)
        self.order: list[int] = []
        self.next_retry = 0.0
        self.sel: selectors.BaseSelector | None = None

    # -- the Technique interface --------------------------------------------
    def start(self, sel: selectors.BaseSelector, now: float) -> None:
        self.sel = sel
        self.next_retry = now + RETRY_INTERVAL
        self.tick(now)
        for port in list(self.order):
            self._connect(port, now)

    def wakeup(self) -> float:
        timeouts = [since + CONNECT_TIMEOUT for _, since in self.connecting.values()]
        return min([self.candidates.next_roll, self.next_retry, *timeouts])

    def tick(self, now: float) -> None:
        if self.candidates.roll(now):
            wanted = [p for p in self.candidates.ports if p not in self.unbindable]
            for port in [p for p in self.listeners if p not in wanted]:
                self._forget(port)
            for port in wanted:
                if port not in self.listeners:
                    self._listen(port)
            self.seen.ports = len(self.listeners)
        for port, (sock, since) in list(self.connecting.items()):
            if now >= since + CONNECT_TIMEOUT:
                self.seen.silent += 1
                self._stop_connecting(port)
        if now >= self.next_retry and self.order:
            self.next_retry = now + RETRY_INTERVAL
            port = self.order.pop(0)
            self.order.append(port)
            if port not in self.connecting:
                self._connect(port, now)

    def ready(self, tag, sock: socket.socket, now: float) -> socket.socket | None:
        kind, port = tag
        if kind == "listen":
            return self._accept(sock)
        if self.connecting.get(port, (None,))[0] is not sock:
            return None
        err = sockopts.connect_result(sock)
        if err is None:
            return None                  # still connecting
        if err == 0:
            self.sel.unregister(sock)
            del self.connecting[port]
            return sock
        if err in (errno.ECONNREFUSED, errno.ECONNRESET):
            self.seen.refused += 1
        else:
            self.seen.unreachable += 1
        self._stop_connecting(port)
        return None

    def pause(self, now: float) -> None:
        pass                             # nothing here disturbs anyone

    def status(self) -> str:
        return f"{len(self.listeners)} ports (direct)"

    def finish(self, leader: bool) -> None:
        return None                      # no router between: nothing to tidy

    def close(self) -> None:
        for port in list(self.listeners):
            self._forget(port)

    # -- internals ----------------------------------------------------------
    def _listen(self, port: int) -> None:
        try:
            sock = sockopts.bound_socket(self.family, port)
            sock.listen(BACKLOG)
        except OSError:
            self.unbindable.add(port)
            self.seen.unbindable = len(self.unbindable)
            self.reporter.info(f"port {port} is in use here, skipped")
            warn_foreign_port(self.reporter, port, self.foreign_users)
            return
        self.listeners[port] = sock
        self.order.append(port)
        self.sel.register(sock, selectors.EVENT_READ, Registration(self, ("listen", port)))

    def _accept(self, listener: socket.socket) -> socket.socket | None:
        try:
            sock, addr = listener.accept()
        except OSError:
            return None
        try:
            if ipaddress.ip_address(addr[0].split("%")[0]) != self.peer:
                raise ValueError(addr[0])
        except ValueError:
            self.reporter.info(f"refused a connection from {addr[0]}: not the peer")
            sockopts.reset_close(sock)
            return None
        sock.setblocking(False)
        return sock

    def _connect(self, port: int, now: float) -> None:
        try:
            sock = sockopts.bound_socket(self.family, port)
        except OSError:
            return                       # the port's 4-tuple is busy: try it later
        err = sock.connect_ex((str(self.peer), port))
        if err not in sockopts.CONNECTING:
            sock.close()
            self.seen.local_error(err)
            return
        self.seen.probes += 1
        self.connecting[port] = (sock, now)
        self.sel.register(sock, selectors.EVENT_WRITE, Registration(self, ("connect", port)))

    def _stop_connecting(self, port: int) -> None:
        sock, _ = self.connecting.pop(port)
        self.sel.unregister(sock)
        sock.close()

    def _forget(self, port: int) -> None:
        if port in self.connecting:
            self._stop_connecting(port)
        sock = self.listeners.pop(port)
        self.sel.unregister(sock)
        sock.close()
        self.order.remove(port)
