"""Ask the home router to open the candidate ports, and accept the peer on them.

Many home routers open a port when a program asks (PCP, NAT-PMP or
UPnP-IGD; :mod:`punchcat.portmap`).  With the candidate ports forwarded to
this host, the peer's probes reach it whatever the peer's NAT does with
their source port, so a peer behind a NAT that randomises ports connects
at once, without the random-port fallback.  Only the user's own router is
asked: nothing else is involved.

The router is asked in a background thread (:class:`~punchcat.portmap.
client.PortMapper`), all protocols in parallel, so that a slow, silent or
broken router never delays or breaks the punch.  For each port the router
maps to the same external port, this technique listens on it
(``SO_REUSEPORT``, beside the port's sentinel) and accepts only the peer's
address; anything else is closed with a reset before a byte is read.  A
port the router maps to another external port is of no use (the peer does
not know it) and is reported.  The mappings are asked for a short lifetime,
renewed while the punch runs, follow the candidate ports as the clock rolls
them, and are removed when the punch ends, whichever way it ends (in the
background after a connection is agreed, so the data does not wait).
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import threading
import time

from .. import sockopts
from . import Registration
from .candidates import ArticlePorts
from .diagnosis import Observations

#: Lifetime asked for each mapping, seconds (renewed at half of it).
LIFETIME = 120
#: How long a removal in the background may take: a router that answers one
#: request at a time needs seconds to confirm 32 (measured: up to 3.7 s).
#: On a signal the mappings get 1 s, the rest expire with their lifetime.
REMOVAL_TIME = 4.0
#: Listening backlog per mapped port.
BACKLOG = 8


class Removal:
    """Removing the mappings in the background: :meth:`start` as a tidy job."""

    def __init__(self, mappers: list):
        self.mappers = mappers

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="punchcat-unmap", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        for mapper in self.mappers:
            mapper.close(REMOVAL_TIME)


class MappedPunch:
    """Port mapping on the home router and listeners on the mapped ports."""

    def __init__(self, family: int, peers: list[str], candidates: ArticlePorts, reporter,
                 observations: Observations):
        self.family = family
        self.peers = {ipaddress.ip_address(p) for p in peers}
        self.candidates = candidates
        self.reporter = reporter
        self.seen = observations
        self.mapper = None
        self.retired: list = []              # mappers of ports the clock rolled away
        self.listeners: dict[int, socket.socket] = {}
        self.reported = False
        self.sel: selectors.BaseSelector | None = None

    # -- the Technique interface --------------------------------------------
    def start(self, sel: selectors.BaseSelector, now: float) -> None:
        self.sel = sel
        self.tick(now)

    def wakeup(self) -> float:
        # The router answers in its own thread: look again soon while it works.
        return min(self.candidates.next_roll,
                   time.monotonic() + (0.1 if not self.reported else 1.0))

    def tick(self, now: float) -> None:
        if self.candidates.roll(now) or self.mapper is None:
            self._remap()
        status = self.mapper.status()
        if status.finished and not self.reported:
            self._report(status)
        for mapping in status.mappings:
            port = mapping.internal_port
            if port not in self.listeners and port in self.candidates.ports:
                if mapping.external_port == port:
                    self._listen(port)
        self.seen.mapped = len(self.listeners)

    def ready(self, port: int, sock: socket.socket, now: float) -> socket.socket | None:
        try:
            conn, addr = sock.accept()
        except OSError:
            return None
        try:
            known = ipaddress.ip_address(addr[0].split("%")[0]) in self.peers
        except ValueError:
            known = False
        if not known:
            self.reporter.info(f"refused a connection from {addr[0]} on mapped port {port}: "
                               f"not the peer")
            sockopts.reset_close(conn)
            return None
        conn.setblocking(False)
        self.reporter.info(f"the peer came in through the router's mapping of port {port}")
        return conn

    def pause(self, now: float) -> None:
        pass

    def status(self) -> str:
        return f"{len(self.listeners)} mapped" if self.listeners else "asking the router"

    def finish(self, leader: bool) -> Removal:
        """Remove the mappings in the background (the link is agreed)."""
        if self.mapper is not None and not self.reported:
            self._report(self.mapper.status())          # what came in so far
        mappers, self.retired, self.mapper = [*self.retired, self.mapper], [], None
        self._close_listeners()
        return Removal([m for m in mappers if m is not None])

    def close(self) -> None:
        if self.mapper is not None and not self.reported:
            self._report(self.mapper.status())
        self._close_listeners()
        for mapper in [*self.retired, self.mapper]:
            if mapper is not None:
                mapper.close()
        self.retired, self.mapper = [], None

    # -- internals ----------------------------------------------------------
    def _report(self, status) -> None:
        """What the router answered, for -v (router text is escaped by portmap)."""
        self.reported = True
        for line in status.lines:
            self.reporter.info(f"router: {line}")
        moved = [m for m in status.mappings if m.external_port != m.internal_port]
        if moved:
            self.reporter.info(f"router: {len(moved)} ports mapped to other external ports, "
                               f"which the peer cannot know: not used")

    def _remap(self) -> None:
        from ..portmap.client import PortMapper      # asyncio: imported only when used
        if self.mapper is not None:          # the clock rolled the ports
            self.retired.append(self.mapper)
            Removal([self.mapper]).start()
        for port in [p for p in self.listeners if p not in self.candidates.ports]:
            self.sel.unregister(self.listeners[port])
            self.listeners.pop(port).close()
        self.mapper = PortMapper(self.candidates.ports, lifetime=LIFETIME).start()
        self.reported = False

    def _listen(self, port: int) -> None:
        try:
            sock = sockopts.bound_socket(self.family, port)
            sock.listen(BACKLOG)
        except OSError:
            return
        self.listeners[port] = sock
        self.sel.register(sock, selectors.EVENT_READ, Registration(self, port))

    def _close_listeners(self) -> None:
        for sock in self.listeners.values():
            self.sel.unregister(sock)
            sock.close()
        self.listeners.clear()

