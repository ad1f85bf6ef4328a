"""Port forwarding over the punched link: the event loop around :mod:`punchcat.mux`.

The ``-L`` side accepts local clients and opens a session for each; the
``-c`` side connects each session to its one target, the one on its own
command line (nothing the peer sends can choose another).  One thread, one
selector: the link, the listening socket and every local connection are
non-blocking.  Per local connection the loop reads only while the session
has credit, and writes what the peer sent as the local end takes it; the
credit it then returns to the peer is what keeps a stalled session from
holding up the others.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket

from . import sockopts
from .channel import SPLICE_F_NONBLOCK, Spliced, Spool
from .endpoints import Endpoint
from .errors import PunchcatError, check_interrupted
from .mux import MAX_PAYLOAD, Credit, Data, Eof, Mux, Opened, Reset
from .relay import HAVE_SPLICE, Stats, relay

#: Keep the link's queue topped up to about this many bytes.
LINK_LOW_WATER = 2 * MAX_PAYLOAD
#: Unsent bytes the kernel may hold for the link (TCP_NOTSENT_LOWAT): small,
#: so that the mux, not the kernel, decides what goes next.
NOTSENT_LOWAT = 256 * 1024
#: The loop wakes at least this often, to notice a signal (errors.check_interrupted).
CHECK_INTERVAL = 1.0
#: How long -c waits for its target to accept a raw session.
CONNECT_TIMEOUT = 10.0


class _Local:
    """One local TCP connection and its session."""

    __slots__ = ("sock", "sid", "out", "connecting", "read_done", "peer_eof", "write_done",
                 "events", "tx")

    def __init__(self, sock: socket.socket, sid: int, connecting: bool = False):
        self.sock = sock
        self.sid = sid
        self.out: list = []          # bytes from the peer, not yet written locally
        self.connecting = connecting
        self.read_done = False       # local EOF seen (and sent on as EOF)
        self.peer_eof = False        # the peer sent EOF
        self.write_done = False      # we shut down our write side locally
        self.events = 0              # what the selector watches for
        self.tx: Spool | None = None  # bytes read from the local end, on their way (splice)


class Forwarder:
    """Serve sessions over *channel* until the link ends.

    Over 200 lines because it is one event loop: the link, the listener and
    every local connection share its selector and its interest sets; the
    protocol itself lives in :class:`~punchcat.mux.Mux`.
    """

    def __init__(self, channel, opener: bool, reporter, listener: socket.socket | None = None,
                 target: Endpoint | None = None):
        self.channel = channel
        self.mux = Mux(opener)
        self.reporter = reporter
        self.listener = listener
        self.target = target
        self.sel = selectors.DefaultSelector()
        self.locals: dict[int, _Local] = {}
        self.link_events = 0
        self.sessions_served = 0
        # On a plain link, a session's bytes go from the local socket to the
        # link through a pipe of ours, by splice, never through our memory.
        self.zero_copy = getattr(channel, "plain", False) and HAVE_SPLICE

    # -- the loop -----------------------------------------------------------
    def run(self) -> None:
        sock = self.channel.sock
        sock.setblocking(False)
        sockopts.limit_unsent(sock, NOTSENT_LOWAT)
        self.sel.register(sock, selectors.EVENT_READ, "link")
        self.link_events = selectors.EVENT_READ
        if self.listener is not None:
            self.listener.setblocking(False)
            self.sel.register(self.listener, selectors.EVENT_READ, "listener")
        try:
            while True:
                check_interrupted()
                self._fill_link()
                for key, mask in self.sel.select(CHECK_INTERVAL):
                    if key.data == "link":
                        if mask & selectors.EVENT_WRITE:
                            self.channel.flush()
                        if mask & selectors.EVENT_READ and not self._link_readable():
                            return
                    elif key.data == "listener":
                        self._accept()
                    else:
                        self._local_event(key.data, mask)
        finally:
            for local in list(self.locals.values()):
                self._close_local(local, abort=True)
            if self.listener is not None:
                self.sel.unregister(self.listener)
            self.sel.close()

    def _fill_link(self) -> None:
        """Move frames from the mux to the link and set the interest sets."""
        while self.channel.backlog() < LINK_LOW_WATER and self.mux.wants_to_write():
            self.channel.queue(self.mux.pull())
        if self.channel.backlog():
            self.channel.flush()
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.channel.backlog() else 0)
        if want != self.link_events:
            self.sel.modify(self.channel.sock, want, "link")
            self.link_events = want
        for local in list(self.locals.values()):
            self._interest(local)

    # -- the link -----------------------------------------------------------
    def _link_readable(self) -> bool:
        """Read the link; False when it has ended."""
        for _ in range(8):
            data = self.channel.read()
            if data is None:
                return True
            if not data:
                self.reporter.info("the peer closed the link")
                return False
            self.feed(data)
        return True

    def feed(self, data) -> None:
        """Bytes from the link (also what arrived with the commit)."""
        for event in self.mux.receive(data):
            self._mux_event(event)

    def _mux_event(self, event) -> None:
        if isinstance(event, Opened):
            self._connect_target(event.sid)
            return
        local = self.locals.get(event.sid)
        if local is None:
            return
        if isinstance(event, Data):
            local.out.append(event.data)
            self._write_local(local)
        elif isinstance(event, Eof):
            local.peer_eof = True
            self._write_local(local)
        elif isinstance(event, Reset):
            self.reporter.info(f"session {event.sid} reset by the peer"
                               + (f": {event.reason}" if event.reason else ""))
            self._close_local(local, abort=True, tell_peer=False)
        elif isinstance(event, Credit):
            pass                                  # interest is recomputed

    # -- local connections --------------------------------------------------
    def _accept(self) -> None:
        for _ in range(16):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.reporter.info(f"accept failed: {exc.strerror}")
                return
            sock.setblocking(False)
            sid = self.mux.open()
            self.sessions_served += 1
            self.reporter.info(f"session {sid} from {addr[0]}:{addr[1]}")
            self._add_local(_Local(sock, sid))

    def _connect_target(self, sid: int) -> None:
        target = self.target
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex((target.host, target.port))
        except OSError as exc:
            self.mux.reset(sid, f"cannot connect to {target}: {exc.strerror}")
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.mux.reset(sid, f"cannot connect to {target}: {errno.errorcode.get(err, err)}")
            return
        self.sessions_served += 1
        self.reporter.info(f"session {sid} to {target}")
        self._add_local(_Local(sock, sid, connecting=True))

    def _add_local(self, local: _Local) -> None:
        self.locals[local.sid] = local
        self.sel.register(local.sock, selectors.EVENT_READ, local)
        local.events = selectors.EVENT_READ
        self._interest(local)

    def _interest(self, local: _Local) -> None:
        want = 0
        if local.connecting:
            want = selectors.EVENT_WRITE
        else:
            if (not local.read_done and self.mux.credit(local.sid) > 0
                    and (local.tx is None or local.tx.room() > 0)):
                want |= selectors.EVENT_READ
            if local.out:
                want |= selectors.EVENT_WRITE
        if want != local.events:
            if want:
                if local.events:
                    self.sel.modify(local.sock, want, local)
                else:
                    self.sel.register(local.sock, want, local)
            else:
                self.sel.unregister(local.sock)
            local.events = want

    def _local_event(self, local: _Local, mask: int) -> None:
        if local.sid not in self.locals:
            return
        if local.connecting:
            err = local.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.reporter.info(f"session {local.sid}: cannot connect to {self.target}: "
                                   f"{errno.errorcode.get(err, err)}")
                self._close_local(local, abort=False, reason=f"cannot connect to {self.target}")
                return
            local.connecting = False
            self._write_local(local)
            return
        if mask & selectors.EVENT_WRITE:
            self._write_local(local)
        if mask & selectors.EVENT_READ and local.sid in self.locals:
            self._read_local(local)

    def _read_local(self, local: _Local) -> None:
        credit = self.mux.credit(local.sid)
        if credit <= 0:
            return
        try:
            if self.zero_copy:
                if local.tx is None:
                    local.tx = Spool()
                want = min(credit, MAX_PAYLOAD, local.tx.room())
                if want <= 0:
                    return
                n = os.splice(local.sock.fileno(), local.tx.w, want, flags=SPLICE_F_NONBLOCK)
                if n:
                    local.tx.filled += n
                    self.mux.send_external(local.sid, Spliced(local.tx, n))
                    return
                data = b""
            else:
                data = local.sock.recv(min(credit, MAX_PAYLOAD))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_local(local, abort=True, reason=f"local connection failed: {exc.strerror}")
            return
        if data:
            self.mux.send(local.sid, data)
            return
        local.read_done = True
        self.mux.send_eof(local.sid)
        self._maybe_done(local)

    def _write_local(self, local: _Local) -> None:
        if local.connecting or local.write_done:
            return
        while local.out:
            try:
                sent = local.sock.send(local.out[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._close_local(local, abort=True, reason=f"local connection failed: {exc.strerror}")
                return
            self.mux.consumed(local.sid, sent)
            if sent == len(local.out[0]):
                local.out.pop(0)
            else:
                local.out[0] = local.out[0][sent:]
        if not local.out and local.peer_eof:
            try:
                local.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            local.write_done = True
            self._maybe_done(local)

    def _maybe_done(self, local: _Local) -> None:
        if local.read_done and local.write_done:
            self._close_local(local, abort=False, tell_peer=False)

    def _close_local(self, local: _Local, abort: bool, tell_peer: bool = True,
                     reason: str = "") -> None:
        """Forget a local connection; *abort* closes it with a reset."""
        self.locals.pop(local.sid, None)
        if local.events:
            self.sel.unregister(local.sock)
            local.events = 0
        if abort:
            sockopts.reset_close(local.sock)   # the local application sees the abort
        else:
            local.sock.close()
        if local.tx is not None:
            local.tx.release()           # closed once queued frames have left
        if tell_peer and (abort or reason):
            self.mux.reset(local.sid, reason)


def serve(channel, opener: bool, reporter, listener=None, target: Endpoint | None = None,
          initial: bytes = b"") -> int:
    """Run the forwarder until the link ends; returns how many sessions it served.

    *initial* is what arrived with the commit.  Raises :class:`LinkLost` when
    the link breaks (reset, timeout).
    """
    forwarder = Forwarder(channel, opener, reporter, listener=listener, target=target)
    try:
        forwarder.feed(initial)
        forwarder.run()
    finally:
        channel.finish()
    return forwarder.sessions_served


def serve_raw(channel, target: Endpoint, reporter, initial: bytes = b"") -> Stats:
    """-c against a peer in pipe mode (ssh's ProxyCommand): one session,
    relayed raw between the link and a connection to *target*."""
    try:
        local = socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        channel.close()
        raise PunchcatError(f"cannot connect to {target}: {exc.strerror or exc}") from None
    local.settimeout(None)
    reporter.info(f"session to {target}")
    try:
        return relay(channel, local.fileno(), local.fileno(), initial,
                     sink_eof=lambda: local.shutdown(socket.SHUT_WR))
    finally:
        local.close()
