"""Punch and agree: run the techniques and the election until one connection wins.

One selector holds the techniques' sockets (their key data is a
:class:`~punchcat.traverse.Registration`) and the connections they handed
over (data None).  Each handed-over connection is greeted and fed to the
sans-IO :class:`~punchcat.handshake.Election`; this loop only carries out
its events.  Every connection that does not win is closed here, with a
reset (see :func:`punchcat.sockopts.reset_close`), and what the techniques
leave behind is tidied in the background (:mod:`punchcat.traverse.tidy`).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import sockopts
from .errors import NoConnection, check_interrupted
from .handshake import Drop, Election, Hello, Send, Won
from .traverse import Registration, Technique
from .traverse.diagnosis import Observations, explain_all

#: A connection whose hello has not arrived after this long is dropped.
HELLO_TIMEOUT = 5.0
#: Connections awaiting their hello at once; more are closed at once (a
#: listener accepts whatever the peer's address opens).
MAX_CANDIDATES = 64
#: The status line is redrawn this often.
STATUS_INTERVAL = 1.0
#: Longest wait for a tidy job at the end of a session (the sweep takes half
#: a second, a slow router's confirmed removals a few seconds).
TIDY_WAIT = 5.0


@dataclass
class Link:
    """The agreed connection, ready for user data."""

    sock: socket.socket
    local: Hello
    peer: Hello
    leader: bool
    leftover: bytes       # user data that arrived with the commit
    #: The relay the connection goes through ("HOST:PORT"); None: direct.
    via: str | None = None
    #: Background jobs tidying the routers (punchcat.traverse.tidy); wait for
    #: them before exiting.
    tidying: list[threading.Thread] = field(default_factory=list)

    def wait_tidy(self) -> None:
        for thread in self.tidying:
            thread.join(TIDY_WAIT)


def agree(techniques: list[Technique], local: Hello, deadline: float, reporter,
          seen: list[Observations], cancelled: Callable[[], bool] = lambda: False,
          fresh_ok: bool = False) -> Link:
    """Run *techniques* and the election until one verified connection is agreed.

    *deadline* is a ``time.monotonic()`` instant after which we give up with
    :class:`NoConnection`, explained from *seen* (one per peer address);
    so do we as soon as *cancelled()* (a punch in the background).
    """
    election = Election(local, fresh_ok)
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, float] = {}  # connection -> hello deadline
    origin: dict[socket.socket, Technique] = {}   # connection -> the technique it came from
    tidy = []                               # jobs to run once the election is over
    link = None
    won: Won | None = None                  # the election's winner, once it names one

    def close(sock: socket.socket) -> None:
        conns.pop(sock, None)
        origin.pop(sock, None)
        followups = election.closed(sock)
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sockopts.reset_close(sock)
        carry_out(followups)

    def carry_out(events) -> None:
        nonlocal won
        for ev in events:
            if isinstance(ev, Send):
                try:
                    ev.conn.sendall(ev.data)
                except OSError as exc:
                    reporter.info(f"connection {_name(ev.conn)} failed: {exc.strerror}")
                    close(ev.conn)
            elif isinstance(ev, Drop):
                toward = _toward(seen, ev.conn)
                if not ev.incompatible:
                    reporter.info(f"dropped connection {_name(ev.conn)}: {ev.reason}")
                    toward.not_punchcat += 1
                elif toward.refused_hello(ev.reason):
                    # Said at once (the user may be able to fix it), once per reason.
                    reporter.warning(f"dropped a connection from {_name(ev.conn)}: "
                                     f"{ev.reason}; still waiting for the peer")
                close(ev.conn)
            elif isinstance(ev, Won) and ev.conn in conns:
                # (a Won whose commit could not be sent was closed above, and
                # the election has named another since)
                won = ev

    try:
        now = time.monotonic()
        for technique in techniques:
            technique.start(sel, now)
        next_status = now
        while won is None:
            check_interrupted()
            now = time.monotonic()
            if cancelled():
                raise NoConnection("the punch was called off")
            if now >= deadline:
                for each in seen:
                    reporter.info(f"seen toward {each.peer}: {each.summary()}")
                raise NoConnection(explain_all(seen))
            for sock in [s for s, t in conns.items() if t <= now]:
                reporter.info(f"dropped connection {_name(sock)}: no hello within {HELLO_TIMEOUT:g} s")
                _toward(seen, sock).no_hello += 1
                close(sock)
            if now >= next_status:
                next_status = now + STATUS_INTERVAL
                reporter.status(f"punchcat: waiting for {' and '.join(s.peer for s in seen)} on "
                                f"{' and '.join(t.status() for t in techniques)}: "
                                f"{max(0.0, deadline - now):.0f} s left")
            wake = min([deadline, next_status, *(t.wakeup() for t in techniques),
                        *conns.values()])
            completed = []
            for key, _mask in sel.select(max(0.0, wake - time.monotonic())):
                if isinstance(key.data, Registration):       # a technique's socket
                    sock = key.data.technique.ready(key.data.tag, key.fileobj, time.monotonic())
                    if sock is not None:
                        completed.append(sock)
                        origin[sock] = key.data.technique
                    continue
                sock = key.fileobj                            # a candidate connection
                try:
                    data = sock.recv(max(1, election.wanted(sock)))
                except OSError as exc:
                    reporter.info(f"connection {_name(sock)} failed: {exc.strerror}")
                    close(sock)
                    continue
                if not data:
                    reporter.info(f"connection {_name(sock)} closed by the other end")
                    close(sock)
                    continue
                carry_out(election.received(sock, data))
            now = time.monotonic()
            for technique in techniques:
                if completed:
                    technique.pause(now)
                technique.tick(now)
            for sock in completed:
                if len(conns) >= MAX_CANDIDATES:
                    reporter.info(f"dropped connection {_name(sock)}: {MAX_CANDIDATES} others "
                                  f"are awaiting their hello")
                    sockopts.reset_close(sock)
                    continue
                reporter.info(f"connection {_name(sock)} established")
                _toward(seen, sock).connections += 1
                conns[sock] = now + HELLO_TIMEOUT
                sel.register(sock, selectors.EVENT_READ)
                carry_out(election.opened(sock))
        leader = election.leads(won.peer)
        reporter.info(f"winner: {_name(won.conn)} ({'leader' if leader else 'follower'})")
        tidy = [job for t in techniques if (job := t.finish(leader)) is not None]
        sel.unregister(won.conn)
        conns.pop(won.conn)
        won.conn.setblocking(True)
        link = Link(won.conn, local, won.peer, leader, won.leftover,
                    via=getattr(origin.get(won.conn), "via", None))
        return link
    finally:
        for sock in list(conns):
            close(sock)
        for technique in techniques:
            technique.close()
        reporter.clear()
        sel.close()
        threads = [job.start() for job in tidy]
        if link is not None:
            link.tidying = threads


def _toward(seen: list[Observations], sock: socket.socket) -> Observations:
    """The observations of the peer address *sock* is connected to."""
    try:
        host = sock.getpeername()[0]
    except OSError:
        return seen[0]
    return next((s for s in seen if s.peer == host), seen[0])


def _name(sock: socket.socket) -> str:
    try:
        local, remote = sock.getsockname(), sock.getpeername()
        return f"{local[1]}->{remote[0]}:{remote[1]}"
    except OSError:
        return "(closed)"
