"""After the election: leave no half-open entry behind in either router.

Theory of operation
-------------------
A sentinel's SYN creates a connection-tracking entry in our own router
(SYN_SENT, which Linux keeps for 120 s).  Closing the sentinel sends
nothing, so when a session ends the entries of every sentinel that never
connected stay behind.  The next session between the same hosts starts on
the same ports (the same buckets), and the side that starts first probes
them while the other is not running yet: its SYN meets the stale entry in
the other's router as the reply of a simultaneous open (SYN_SENT2), is
forwarded to a host with no socket there, and the entry is left in a state
in which the router finds every later SYN of that host on that port out of
window, for two minutes.  Measured: chains of sessions between the same
hosts slowed to seconds, one in 40 to 26 s.

So the punch is finished off while both sides still run: right after it
commits (``$``), the *leader* sweeps, sending a full-TTL SYN from every
candidate port that still has a socket out to the peer's same port; the *follower* holds its sentinels
(no longer recycled) for a grace period.  Each sweep SYN meets a held
sentinel, the simultaneous open completes through both routers, and both
sides end what completed with a FIN and a reset: the entries in both
routers end as CLOSE (ten seconds; a SYN from the far side in CLOSE is not
forwarded, while one from the near side, after a FIN, starts afresh).  A port
whose entry was already spoiled stays so; no new ones are made.

The sweep runs in a thread of its own with its own sockets, while the data
already moves on the winning connection; it ends within the grace and
closes whatever is left.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from .. import sockopts

#: How long the sweep (leader) waits for its SYNs' answers.
GRACE = 0.5
#: How long the hold (follower) keeps its sentinels for the sweep: longer,
#: since the leader sweeps only after it sent the commit, and a loaded host
#: may be slow to start its thread.  It ends sooner when every held socket
#: has resolved.
HOLD = 1.0


@dataclass
class Tidy:
    """What a technique leaves to tidy up after the election."""

    family: int
    peer: str
    held: dict[int, socket.socket] = field(default_factory=dict)   # port -> socket still out
    leader: bool = False

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread."""
        thread = threading.Thread(target=self.run, name="punchcat-tidy", daemon=True)
        thread.start()
        return thread

    def run(self) -> int:
        """Sweep or hold until every socket is done or the grace is over;
        returns how many connections completed (and were reset)."""
        sel = selectors.DefaultSelector()
        socks: list[socket.socket] = []
        completed = 0
        try:
            if self.leader:
                # Only ports that still hold a socket: those that connected
                # (the winner and the losers) or met a reset are closed
                # in both routers already.
                for sock in self.held.values():
                    sock.close()
                for port in self.held:
                    try:
                        sock = sockopts.punch_socket(self.family, port)
                    except OSError:
                        continue         # the winner's port, or taken meanwhile
                    socks.append(sock)
                    if sock.connect_ex((self.peer, port)) in sockopts.CONNECTING:
                        sel.register(sock, selectors.EVENT_WRITE)
            else:
                for sock in self.held.values():
                    socks.append(sock)
                    sel.register(sock, selectors.EVENT_WRITE)
            self.held = {}
            deadline = time.monotonic() + (GRACE if self.leader else HOLD)
            while sel.get_map():
                # One last look without waiting once the time is up: a thread
                # that got the CPU late still ends what already connected.
                left = max(0.0, deadline - time.monotonic())
                events = sel.select(left)
                for key, _ in events:
                    sock = key.fileobj
                    sel.unregister(sock)
                    if sockopts.connect_result(sock) == 0:
                        completed += 1
                        _finish(sock)
                    else:
                        sock.close()
                if not left:
                    break
        except OSError:
            pass                         # best effort: the session goes on regardless
        finally:
            sel.close()
            for sock in socks:
                sock.close()             # in SYN_SENT this sends nothing
        return completed


def _finish(sock: socket.socket) -> None:
    """FIN, then reset: the FIN marks the entry in both routers as closed on
    purpose, so that the next SYN from either host on this port starts a
    fresh one (after a reset alone, a router lets only the side that sent
    it reopen the entry, for ten seconds); the reset leaves no TIME_WAIT."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sockopts.reset_close(sock)
