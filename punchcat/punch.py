"""Sockets that spray SYNs at the peer until TCP connections complete.

Part 3 of the article: one non-blocking socket per candidate port, bound to
that port with SO_REUSEADDR and SO_REUSEPORT, connecting to the *same* port
on the peer (local port = remote port: it relies on NATs that preserve the
source port).  Both sides connect at about the same time, so the SYNs cross
and TCP's simultaneous open completes the connection through both NATs.

A socket in SYN_SENT is never closed while the punch is under way: a close
in that state sends nothing, but a close of a half-open connection could send
a RST that makes the far router forget the mapping.  A socket whose connect
failed (refused, timed out) is replaced by a new one bound to the same port;
that works everywhere, whereas only Linux lets a failed socket connect again.

The puncher is driven by :func:`punchcat.handshake.establish`: it registers
its sockets in the caller's selector, is told of their events, and hands
over each socket that completes.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time

#: Pause between spray rounds (article: "a 0.01 second sleep").
PAUSE = 0.01
#: A port that produced a connection is not tried again for this long (the
#: connection may have been to something that is not a punchcat).
COOLDOWN = 30.0


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


class Puncher:
    """The article's punch: wait for the rendezvous, then spray the ports."""

    def __init__(self, family: int, peer: str, ports, start_at: float, reporter,
                 deadline: float, pause: float = PAUSE):
        self.family = family
        self.peer = peer
        self.ports = list(ports)
        self.start_at = start_at
        self.deadline = deadline
        self.reporter = reporter
        self.pause = pause
        self.socks: dict[int, socket.socket] = {}
        self.retry_at: dict[int, float] = {}   # port -> when to re-arm it
        self.unbound: list[int] = []
        self.sel: selectors.BaseSelector | None = None
        self.next_tick = start_at
        self.connections = 0

    # -- driven by handshake.establish -------------------------------------
    def start(self, sel: selectors.BaseSelector) -> None:
        self.sel = sel
        for port in self.ports:
            self._arm(port)
        if self.unbound:
            self.reporter.info(f"ports in use here, skipped: {' '.join(map(str, self.unbound))}")

    def wakeup(self) -> float:
        return self.next_tick

    def tick(self) -> list[socket.socket]:
        """Send what is due; returns the sockets whose connection completed."""
        now = time.monotonic()
        if now < self.next_tick:
            return []
        if now < self.start_at:
            self.reporter.status(
                f"punchcat: waiting for the rendezvous with {self.peer}: {self.start_at - now:.0f} s")
            self.next_tick = min(self.start_at, now + 1.0)
            return []
        self.reporter.status(
            f"punchcat: punching {self.peer} on {len(self.socks)} ports: "
            f"{max(0.0, self.deadline - now):.0f} s left")
        for port in [p for p, t in self.retry_at.items() if t <= now]:
            del self.retry_at[port]
            self._arm(port)
        done = []
        for port, sock in list(self.socks.items()):
            done += self._connect(port, sock)
        self.next_tick = now + self.pause
        return done

    def handle(self, key: selectors.SelectorKey) -> list[socket.socket]:
        port, sock = key.data, key.fileobj
        if self.socks.get(port) is not sock:
            return []
        return self._connect(port, sock)

    def close(self) -> None:
        for port in list(self.socks):
            self._forget(port).close()
        self.reporter.clear()

    def failure_hint(self) -> str:
        if len(self.unbound) == len(self.ports):
            return (f"no connection to {self.peer}: none of the {len(self.ports)} "
                    f"candidate ports could be bound here")
        return (f"no connection to {self.peer}: is punchcat running there, pointed at this "
                f"host's public address, with a clock within the clock error? Both NATs must "
                f"preserve source ports; a NAT that randomises them cannot be punched")

    # -- internals ---------------------------------------------------------
    def _arm(self, port: int) -> None:
        try:
            sock = bound_socket(self.family, port)
        except OSError:
            if port not in self.unbound:
                self.unbound.append(port)
            return
        self.socks[port] = sock
        self.sel.register(sock, selectors.EVENT_WRITE, port)

    def _forget(self, port: int) -> socket.socket:
        sock = self.socks.pop(port)
        self.sel.unregister(sock)
        return sock

    def _connect(self, port: int, sock: socket.socket) -> list[socket.socket]:
        """(Re)issue connect on *port*; returns the socket if it completed."""
        if time.monotonic() < self.start_at:
            return []
        err = sock.connect_ex((self.peer, port))
        if err in (0, errno.EISCONN):
            self.connections += 1
            self.retry_at[port] = time.monotonic() + COOLDOWN
            return [self._forget(port)]
        if err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            return []
        # Failed (refused, unreachable, 4-tuple still in TIME_WAIT...): a fresh
        # socket on the same port after a pause.  Closing a socket whose connect
        # failed sends nothing.
        self._forget(port).close()
        self.retry_at[port] = time.monotonic() + self.pause
        return []
