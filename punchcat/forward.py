"""Port forwarding over the punched link: the event loop around :mod:`punchcat.mux`.

The ``-L`` side accepts local clients and opens a session for each; the
``-c`` side connects each session to its one target, the one on its own
command line (nothing the peer sends can choose another).  One thread, one
selector: the link, the listening socket and every local connection are
non-blocking.  Per local connection the loop reads only while the session
has credit, and writes what the peer sent as the local end takes it; the
credit it then returns to the peer is what keeps a stalled session from
holding up the others.

Theory of operation: what the peer can make this side hold
-----------------------------------------------------------
Every buffer, queue, count and wait here has a bound that does not depend
on what the peer sends (:mod:`punchcat.mux` holds the protocol's half):

* *Received data.*  The link is read into one reused buffer (the channel's)
  and each DATA payload is written to its local socket at once; what the
  socket does not take is copied into that session's own buffer.  So a
  payload never pins a read buffer, and a session holds at most its window
  (``mux.WINDOW_SIZE``).  On a plain link the rest of a large payload goes
  from the link to its local socket inside the kernel
  (:mod:`punchcat.rxsplice`), and what the socket does not take lands in
  the same buffer.  All sessions together hold at most about
  :data:`RECEIVE_BUDGET`: past it, the link is not read until local ends
  catch up (the peer's further bytes wait in TCP's buffers, which the
  kernel bounds).  That budget is four full windows: up to four local
  clients may stop reading without holding up the others; more pause the
  link until they read again.
* *Answers.*  The link is not read while the control frames waiting to be
  sent (window grants, resets, refusals) exceed :data:`CONTROL_LIMIT`: a
  peer that sends without reading cannot make this side queue answers
  without end.
* *Sent data.*  Local ends are read only while the DATA queued for the
  link (all sessions) is under :data:`SEND_BUDGET`, and each session only
  within its credit; on a plain link the bytes wait in a kernel pipe
  (:class:`~punchcat.channel.Spool`), not in this process.
* *Sessions.*  At most ``max_sessions`` at once (``--max-sessions``): the
  ``-L`` side stops accepting at the limit (clients wait in the listen
  backlog), the ``-c`` side refuses OPENs beyond it.  A session whose one
  direction has ended and that moves no byte for ``half_close_timeout``
  seconds is reset, and a target that does not answer a connect within
  :data:`CONNECT_TIMEOUT` too, so a peer that never sends EOF cannot keep
  sockets in CLOSE-WAIT; each local connection costs at most three file
  descriptors (its socket and a spool pipe).
* *CPU.*  The loop recomputes the interest set of only the connections
  something happened to (the *dirty* ones), not of all of them per pass;
  the listener rests when ``accept()`` fails (:mod:`punchcat.acceptor`);
  nothing is ever left readable or writable in the selector without being
  served.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time

from . import sockopts, stream
from .acceptor import Acceptor
from .channel import HAVE_SPLICE, READ_SIZE, SPLICE_F_NONBLOCK, Spliced, Spool
from .endpoints import CONNECT_TIMEOUT, Endpoint
from .errors import LinkLost, PunchcatError, check_interrupted
from .mux import MAX_PAYLOAD, MAX_SESSIONS, WINDOW_SIZE, Credit, Data, Eof, Mux, Opened, Reset
from .muxlink import StreamEnd
from .rxsplice import PayloadSplicer

#: How long the last records and the ABORT may take to go when this side stops.
ABORT_GRACE = 0.5
#: Keep the link's queue topped up to about this many bytes.
LINK_LOW_WATER = 2 * MAX_PAYLOAD
#: Unsent bytes the kernel may hold for the link (TCP_NOTSENT_LOWAT): small,
#: so that the mux, not the kernel, decides what goes next.
NOTSENT_LOWAT = 256 * 1024
#: The loop wakes at least this often, to notice a signal (errors.check_interrupted).
CHECK_INTERVAL = 1.0
#: Bytes from the peer held for local ends, all sessions: past it the link is not read.
RECEIVE_BUDGET = 4 * WINDOW_SIZE
#: Control frames waiting to be sent: past it the link is not read.
CONTROL_LIMIT = 256 * 1024
#: DATA queued for the link, all sessions: past it local ends are not read.
SEND_BUDGET = 4 * MAX_PAYLOAD
#: Most reads of the link per wake-up, so that local ends get their turn.
LINK_READS = 8
#: A pending payload at least this large goes to its local end by splice.
SPLICE_MIN = 32 * 1024
#: What is read after a spliced payload: the next header and a little more.
HEADER_READ = 4096


class _Local:
    """One local TCP connection and its session."""

    __slots__ = ("sock", "sid", "out", "connecting", "read_done", "peer_eof", "write_done",
                 "events", "tx", "active")

    def __init__(self, sock: socket.socket, sid: int, now: float, connecting: bool = False):
        self.sock = sock
        self.sid = sid
        self.out = bytearray()       # bytes from the peer, not yet written locally (a copy)
        self.connecting = connecting
        self.read_done = False       # local EOF seen (and sent on as EOF)
        self.peer_eof = False        # the peer sent EOF
        self.write_done = False      # we shut down our write side locally
        self.events = 0              # what the selector watches for
        self.tx: Spool | None = None  # bytes read from the local end, on their way (splice)
        self.active = now            # when a byte last moved (or the session began)


class Forwarder:
    """Serve sessions over *channel* until the link ends.

    About 480 lines because it is one event loop: the link, the listener and
    every local connection share its selector, its interest sets and the
    budgets above (what is held, what is queued), and each handler changes
    them; split into classes, each would reach into the others' state.  What
    could stand alone already does: the protocol (:class:`~punchcat.mux.Mux`),
    the stream's records (:class:`~punchcat.muxlink.StreamEnd`), the kernel
    splice of payloads (:class:`~punchcat.rxsplice.PayloadSplicer`) and the
    listener's pacing (:class:`~punchcat.acceptor.Acceptor`).
    """

    def __init__(self, opener: bool, reporter, listener: socket.socket | None = None,
                 target: Endpoint | None = None, max_sessions: int = MAX_SESSIONS,
                 half_close_timeout: float = 60.0):
        self.channel = None                  # the current link's
        self.link = StreamEnd()              # the mux's bytes in the stream's records
        self.offsets = self.link.offsets
        self.mux = Mux(opener, max_sessions)
        self.reporter = reporter
        self.listener = listener
        self.acceptor = Acceptor(listener, reporter) if listener is not None else None
        self.target = target
        self.max_sessions = max_sessions
        self.half_close_timeout = half_close_timeout
        self.sel = selectors.DefaultSelector()
        self.locals: dict[int, _Local] = {}
        self.link_events = 0
        self.listener_events = 0
        self.sessions_served = 0
        self.held = 0                       # bytes in the locals' out buffers
        self.now = time.monotonic()
        self._dirty: set[_Local] = set()    # interest sets to recompute
        self._spool_full: set[_Local] = set()
        self._send_open = True              # mux.queued() under SEND_BUDGET
        self._next_sweep = self.now + CHECK_INTERVAL
        # A session's bytes go from the local socket into a pipe of ours by
        # splice (one copy less: from there into the retention ring); on a
        # plain link, large payloads from the link to the local socket too (rx).
        self.zero_copy = HAVE_SPLICE
        self.rx = PayloadSplicer()
        self._spliced = False                # the last payload went by splice
        self._wake_r, self._wake_w = socket.socketpair()   # interrupt() from another thread
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._let_go = False

    # -- the loop -----------------------------------------------------------
    def run_link(self, channel, leftover: bytes = b"", opening: list[bytes] = (),
                 resuming: bool = False, progress=None) -> bool:
        """Serve the sessions over *channel* until the peer ends the link
        (True) or :meth:`interrupt` lets go of it (False); a link that breaks
        raises :class:`LinkLost` and everything else stays for the next."""
        self.channel = channel
        self.link.attach(channel, list(opening), resuming)
        self._let_go = False
        self._spliced = False
        sock = channel.sock
        sock.setblocking(False)
        sockopts.limit_unsent(sock, NOTSENT_LOWAT)
        try:
            if leftover:
                self.feed(leftover)
            while not self.link.peer_done:
                check_interrupted()
                self.now = time.monotonic()
                if self.now >= self._next_sweep:
                    self._sweep()
                self._fill_link()
                self._watch_listener()
                self._refresh()
                for key, mask in self.sel.select(self._timeout()):
                    self.now = time.monotonic()
                    if key.data == "link":
                        if mask & selectors.EVENT_WRITE:
                            self._flush()
                        if mask & selectors.EVENT_READ and not self._link_readable():
                            break
                    elif key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._local_event(key.data, mask)
                if self._let_go:
                    return False
            self.reporter.info(self.link.peer_done)
            return True
        finally:
            if self.link_events:
                self.sel.unregister(sock)
                self.link_events = 0
            self.channel = None

    def interrupt(self) -> None:
        """Let go of the current link (from another thread): run_link returns False."""
        self._let_go = True
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    @property
    def peer_key(self) -> bytes | None:
        return self.link.peer_key

    def abort(self, channel, reason: str) -> None:
        """Tell the peer this side stops for *reason*, after the records
        already queued (best effort, about half a second at most)."""
        try:
            if channel.drain(ABORT_GRACE):
                channel.send_parts([stream.abort_record(reason)])
        except (OSError, PunchcatError):
            pass

    def close(self) -> None:
        """The end of the run: every local connection is reset, the loop's
        resources freed."""
        for local in list(self.locals.values()):
            self._close_local(local, abort=True)
        if self.listener_events:
            self.sel.unregister(self.listener)
            self.listener_events = 0
        self.sel.close()
        self.rx.close()
        self._wake_r.close()
        self._wake_w.close()

    def _timeout(self) -> float:
        wake = min(self._next_sweep, self.now + CHECK_INTERVAL)
        resume = self.acceptor.wakeup(self.now) if self.acceptor is not None else None
        if resume is not None:
            wake = min(wake, resume)
        return max(0.0, wake - time.monotonic())

    def _fill_link(self) -> None:
        """Move frames from the mux into the stream, the stream's records to
        the link, and set the link's interest."""
        while self.mux.wants_to_write():
            # pull() may go a frame and the control backlog beyond its budget
            budget = self.link.room() - MAX_PAYLOAD - CONTROL_LIMIT - 4096
            if budget <= 0:
                break
            self.link.put(self.mux.pull(min(budget, 4 * MAX_PAYLOAD)))
        self.link.fill(LINK_LOW_WATER)
        if self.channel.backlog():
            self._flush()
        send_open = self.mux.queued() < SEND_BUDGET
        if send_open != self._send_open:       # every reader's interest changes
            self._send_open = send_open
            self._dirty.update(self.locals.values())
        want = ((selectors.EVENT_READ if self._may_read_link() else 0)
                | (selectors.EVENT_WRITE if self.channel.backlog() else 0))
        self._set_interest(self.channel.sock, self.link_events, want, "link")
        self.link_events = want

    def _flush(self) -> None:
        self.channel.flush()
        if self._spool_full:                   # spliced bytes left: the pipes have room
            self._dirty |= self._spool_full
            self._spool_full.clear()

    def _may_read_link(self) -> bool:
        return self.held < RECEIVE_BUDGET and self.mux.control_backlog() < CONTROL_LIMIT

    def _refresh(self) -> None:
        """Recompute the interest sets of the connections something happened to."""
        dirty, self._dirty = self._dirty, set()
        for local in dirty:
            if local.sid in self.locals:
                self._interest(local)

    def _set_interest(self, sock, current: int, want: int, data) -> None:
        if want == current:
            return
        if not want:
            self.sel.unregister(sock)
        elif current:
            self.sel.modify(sock, want, data)
        else:
            self.sel.register(sock, want, data)

    def _sweep(self) -> None:
        """Once a second: end sessions that wait for what will not come."""
        self._next_sweep = self.now + CHECK_INTERVAL
        for local in list(self.locals.values()):
            idle = self.now - local.active
            if local.connecting and idle > CONNECT_TIMEOUT:
                self.reporter.info(f"session {local.sid}: cannot connect to {self.target}: "
                                   f"no answer within {CONNECT_TIMEOUT:g} s")
                self._close_local(local, abort=False,
                                  reason=f"cannot connect to {self.target}: timed out")
            elif (local.read_done or local.peer_eof) and idle > self.half_close_timeout:
                self.reporter.info(f"session {local.sid}: half-closed and idle for "
                                   f"{self.half_close_timeout:g} s, reset")
                self._close_local(local, abort=True,
                                  reason=f"half-closed and idle for {self.half_close_timeout:g} s")

    # -- the link -----------------------------------------------------------
    def _link_readable(self) -> bool:
        """Read the link; False when it has ended."""
        for _ in range(LINK_READS):
            if not self._may_read_link():
                return True
            if self.zero_copy:
                moved = self._splice_payload()
                if moved is not None:
                    if moved < 0:
                        return self._link_ended()
                    if moved == 0:
                        return True
                    continue
            # After a spliced payload, read little: the next frame's header
            # and the start of its payload, so that the rest is spliced too.
            data = self.channel.read(HEADER_READ if self._spliced else READ_SIZE)
            if data is None:
                return True
            if not data:
                return self._link_ended()
            self._spliced = False
            self.feed(data)
            if self.link.peer_done:
                return False
        return True

    def _link_ended(self) -> bool:
        if self.link.peer_done:
            return False
        raise LinkLost("connection lost while receiving: the link ended before the stream did")

    def _splice_payload(self) -> int | None:
        """Move the rest of a large DATA payload from the link to its local
        socket inside the kernel (:mod:`punchcat.rxsplice`): the bytes, 0 if
        the link has none now, -1 at its end; None when this does not apply
        (no large payload pending, or its local end has a backlog or is
        still connecting: the copying path serves those)."""
        pending = self.mux.payload_pending()
        left = min(pending[1], self.link.data_pending()) if pending is not None else 0
        if not self.channel.plain or left < SPLICE_MIN:
            return None
        sid = pending[0]
        local = self.locals.get(sid)
        if local is None or local.out or local.connecting:
            return None
        n = self.rx.pull(self.channel.sock.fileno(), left)
        if n <= 0:
            return n
        self.link.moved(n)
        self.mux.payload_moved(n)
        self._spliced = True
        moved, rest, error = self.rx.push(local.sock.fileno(), n)
        if moved:
            local.active = self.now
            self.mux.consumed(local.sid, moved)
        if error is not None:
            self._close_local(local, abort=True,
                              reason=f"local connection failed: {error.strerror}")
        elif rest:
            local.out += rest
            self.held += len(rest)
            self._dirty.add(local)
        return n

    def feed(self, data) -> None:
        """Bytes from the link (also what arrived with the commit)."""
        self.link.feed(data, lambda view: self.mux.receive_into(view, self._mux_event))

    def _mux_event(self, event) -> None:
        if isinstance(event, Opened):
            self._connect_target(event.sid)
            return
        local = self.locals.get(event.sid)
        if local is None:
            return
        if isinstance(event, Data):
            self._deliver(local, event.data)
        elif isinstance(event, Eof):
            local.peer_eof = True
            local.active = self.now
            self._write_local(local)
        elif isinstance(event, Reset):
            self.reporter.info(f"session {event.sid} reset by the peer"
                               + (f": {event.reason}" if event.reason else ""))
            self._close_local(local, abort=True, tell_peer=False)
        elif isinstance(event, Credit):
            self._dirty.add(local)

    def _deliver(self, local: _Local, view) -> None:
        """A payload for *local*: written now if the socket takes it, the
        rest copied (the view is only valid until the next read)."""
        if not local.out and not local.connecting:
            try:
                sent = local.sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._close_local(local, abort=True,
                                  reason=f"local connection failed: {exc.strerror}")
                return
            if sent:
                local.active = self.now
                self.mux.consumed(local.sid, sent)
                if sent == len(view):
                    return
                view = view[sent:]
        local.out += view
        self.held += len(view)
        self._dirty.add(local)

    # -- local connections --------------------------------------------------
    def _watch_listener(self) -> None:
        if self.acceptor is None:
            return
        room = len(self.locals) < self.max_sessions
        want = selectors.EVENT_READ if self.acceptor.watch(self.now, room) else 0
        if want != self.listener_events and not room:
            self.reporter.info(f"{self.max_sessions} sessions open (--max-sessions): new "
                               f"local clients wait")
        self._set_interest(self.listener, self.listener_events, want, "listener")
        self.listener_events = want

    def _accept(self) -> None:
        for sock, addr in self.acceptor.accept(self.now, self.max_sessions - len(self.locals)):
            sid = self.mux.open()
            self.sessions_served += 1
            self.reporter.info(f"session {sid} from {addr[0]}:{addr[1]}")
            self._add_local(_Local(sock, sid, self.now))

    def _connect_target(self, sid: int) -> None:
        target = self.target
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
        except OSError as exc:
            self.mux.reset(sid, f"cannot connect to {target}: {exc.strerror}")
            return
        try:
            sock.setblocking(False)
            err = sock.connect_ex((target.host, target.port))
        except OSError as exc:
            err = exc.errno
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.mux.reset(sid, f"cannot connect to {target}: {errno.errorcode.get(err, err)}")
            return
        self.sessions_served += 1
        self.reporter.info(f"session {sid} to {target}")
        self._add_local(_Local(sock, sid, self.now, connecting=True))

    def _add_local(self, local: _Local) -> None:
        self.locals[local.sid] = local
        self._interest(local)

    def _interest(self, local: _Local) -> None:
        want = 0
        if local.connecting:
            want = selectors.EVENT_WRITE
        else:
            if not local.read_done and self._send_open and self.mux.credit(local.sid) > 0:
                if local.tx is None or local.tx.room() > 0:
                    want |= selectors.EVENT_READ
                else:
                    self._spool_full.add(local)
            if local.out:
                want |= selectors.EVENT_WRITE
        self._set_interest(local.sock, local.events, want, local)
        local.events = want

    def _local_event(self, local: _Local, mask: int) -> None:
        if local.sid not in self.locals:
            return
        self._dirty.add(local)
        if local.connecting:
            err = local.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.reporter.info(f"session {local.sid}: cannot connect to {self.target}: "
                                   f"{errno.errorcode.get(err, err)}")
                self._close_local(local, abort=False, reason=f"cannot connect to {self.target}")
                return
            local.connecting = False
            local.active = self.now
            self._write_local(local)
            return
        if mask & selectors.EVENT_WRITE:
            self._write_local(local)
        if mask & selectors.EVENT_READ and local.sid in self.locals:
            self._read_local(local)

    def _read_local(self, local: _Local) -> None:
        credit = self.mux.credit(local.sid)
        if credit <= 0 or not self._send_open:
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
                    local.tx.owed += n
                    local.active = self.now
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
            local.active = self.now
            self.mux.send(local.sid, data)
            return
        local.read_done = True
        local.active = self.now
        self.mux.send_eof(local.sid)
        self._maybe_done(local)

    def _write_local(self, local: _Local) -> None:
        if local.connecting or local.write_done:
            return
        if local.out:
            try:
                sent = local.sock.send(local.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._close_local(local, abort=True, reason=f"local connection failed: {exc.strerror}")
                return
            if sent:
                local.active = self.now
                self.mux.consumed(local.sid, sent)
                self.held -= sent
                if sent == len(local.out):
                    local.out = bytearray()          # give the memory back
                else:
                    del local.out[:sent]
            self._dirty.add(local)
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
        if self.locals.pop(local.sid, None) is None:
            return
        self.held -= len(local.out)
        local.out = bytearray()
        self._dirty.discard(local)
        self._spool_full.discard(local)
        if local.events:
            self.sel.unregister(local.sock)
            local.events = 0
        if abort:
            sockopts.reset_close(local.sock)   # the local application sees the abort
        else:
            local.sock.close()
        if local.tx is not None:
            if abort:
                local.tx.close()         # the mux dropped the session's queued frames
            else:
                local.tx.release()       # closed once queued frames have gone to the ring
        if tell_peer and (abort or reason):
            self.mux.reset(local.sid, reason)


def serve(channel, opener: bool, reporter, listener=None, target: Endpoint | None = None,
          initial: bytes = b"", max_sessions: int = MAX_SESSIONS,
          half_close_timeout: float = 60.0) -> int:
    """One link, no resuming: run the forwarder until the link ends; returns
    how many sessions it served (tests of the forwarder alone).  Raises
    :class:`LinkLost` when the link breaks (reset, timeout)."""
    forwarder = Forwarder(opener, reporter, listener=listener, target=target,
                          max_sessions=max_sessions, half_close_timeout=half_close_timeout)
    try:
        forwarder.run_link(channel, initial)
    except PunchcatError as exc:
        if not isinstance(exc, LinkLost):
            forwarder.abort(channel, str(exc))
        raise
    finally:
        forwarder.close()
        channel.close()
    return forwarder.sessions_served
