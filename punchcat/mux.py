"""Many TCP sessions over the one punched link (sans-IO).

Theory of operation
-------------------
Between a ``-L`` side (the *opener*, which accepts local clients) and a
``-c`` side (which connects each session to its target), every session's
bytes travel in frames on the single punched connection::

    type (1 byte) | session id (4 bytes) | length (4 bytes) | payload

=======  ============================================================
OPEN     the opener starts a session (ids increase, never reused)
DATA     payload bytes of the session
EOF      the sender will send no more on this session (half-close)
RESET    the session is aborted; payload: a short reason in UTF-8
WINDOW   payload: 4-byte credit; the receiver may take that many more bytes
=======  ============================================================

*Flow control.*  Each direction of each session has a window: a sender may
have at most :data:`WINDOW_SIZE` bytes of DATA that the receiver has not yet
delivered to its local socket.  The receiver returns credit (WINDOW frames)
as its local socket takes the bytes.  So a session whose local end stalls
holds at most one window of buffered data, and never stops the link: the
other sessions keep flowing.

*Fairness.*  Frames waiting to be sent are taken one per session in turn
(control frames first), and DATA frames carry at most :data:`MAX_PAYLOAD`
bytes, so an interactive session's keystroke waits behind at most one
bulk frame per busy session, not behind a whole transfer.

*Ends.*  A session is finished when both sides have sent EOF, or at once
when either sends RESET.  Frames that were in flight for a session that has
just ended are ignored; frames for a session that was never opened are a
protocol error.

*Memory.*  Whatever the peer sends, what this side holds because of it is
bounded, and each bound is counted here for the I/O layer
(:mod:`punchcat.forward`) to act on:

* Received payloads are handed out as views of the bytes fed in, valid
  only until the caller's buffer is used again: the I/O layer writes them
  out or copies them, so nothing the peer sent pins a read buffer.  What a
  session may have buffered is its window (WINDOW_SIZE); more is a
  protocol error.  A DATA frame cut by the end of a read is delivered in
  parts as it arrives (never assembled: no copy); only a cut header or
  control frame is, in a buffer of at most one such frame (265 bytes).
* Frames in flight for a session that has just ended are ignored, but
  not for free: when this side ends a session, what the peer could still
  send on it (its remaining window) is added to a *stray allowance*, and
  DATA for ended sessions draws on it; more is a protocol error.  So an
  ended session is not a way around the windows.
* At most *max_sessions* sessions are open at once on the ``-c`` side; an
  OPEN beyond that is answered with RESET "too many sessions", kept as a
  session id only (4 bytes; the frame is made when it is sent).
* Frames waiting to be sent are counted: :meth:`Mux.control_backlog` (the
  control frames, which the peer's frames cause: WINDOW grants, RESET
  answers) and :meth:`Mux.queued` (DATA this side's local ends gave).  The
  I/O layer stops reading the link while the first is over its limit (a
  peer that sends but never reads cannot make this side queue answers
  without end) and stops reading local ends while the second is.

:class:`Mux` never touches a socket: :meth:`Mux.receive` is fed the bytes
read from the link and returns events (:meth:`Mux.receive_into` hands
them to a callback instead, one at a time); :meth:`Mux.pull` gives the
bytes to write to it.  Any malformed input raises
:class:`~punchcat.errors.RemoteProtocolError`; misuse by the caller raises
:class:`~punchcat.errors.LocalProtocolError`.
"""

from __future__ import annotations

import array
import collections
import struct
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct("!BII")
OPEN, DATA, EOF, RESET, WINDOW = 1, 2, 3, 4, 5
FRAME_NAMES = {OPEN: "OPEN", DATA: "DATA", EOF: "EOF", RESET: "RESET", WINDOW: "WINDOW"}
#: Largest DATA payload; also the fairness quantum.
MAX_PAYLOAD = 256 * 1024
#: Per-direction, per-session window (bytes in flight or buffered).
WINDOW_SIZE = 4 * 1024 * 1024
#: Credit is returned in pieces at least this large (fewer WINDOW frames).
GRANT_STEP = WINDOW_SIZE // 4
MAX_REASON = 256
#: Sessions open at once on the -c side unless the caller says otherwise.
MAX_SESSIONS = 64
#: The reason sent with the RESET that refuses an OPEN over the limit.
REFUSED = b"too many sessions"
_PAYLOAD_LIMIT = {OPEN: 0, DATA: MAX_PAYLOAD, EOF: 0, RESET: MAX_REASON, WINDOW: 4}


# -- events ------------------------------------------------------------------
@dataclass(frozen=True)
class Opened:
    sid: int


@dataclass(frozen=True)
class Data:
    sid: int
    data: memoryview     # a view of the bytes fed in: valid until they are reused


@dataclass(frozen=True)
class Eof:
    sid: int


@dataclass(frozen=True)
class Reset:
    sid: int
    reason: str


@dataclass(frozen=True)
class Credit:
    """The peer gave credit to a session that had none: it may send again."""
    sid: int


class _Session:
    __slots__ = ("sid", "credit", "allowed", "ungranted", "eof_sent", "eof_received", "queue",
                 "queued")

    def __init__(self, sid: int):
        self.sid = sid
        self.credit = WINDOW_SIZE      # bytes we may still send
        self.allowed = WINDOW_SIZE     # bytes the peer may still send us
        self.ungranted = 0             # delivered locally, credit not yet returned
        self.eof_sent = False
        self.eof_received = False
        self.queue: collections.deque = collections.deque()   # DATA/EOF frames to send
        self.queued = 0                # DATA payload bytes in the queue


class Mux:
    """One side of the multiplexer (see the module docstring).

    Over 200 lines because it is one state machine (the sessions, their
    windows and the fair send queue), which reads best in one place.
    """

    def __init__(self, opener: bool, max_sessions: int = MAX_SESSIONS):
        self.opener = opener
        self.max_sessions = max_sessions
        self.sessions: dict[int, _Session] = {}
        self.highest = 0                 # highest session id ever opened
        self._control = bytearray()      # control frames to send, back to back
        self._refused = array.array("I")  # sids to answer with RESET, from _refused_at on
        self._refused_at = 0
        self._ready: collections.deque = collections.deque()   # sids with queued frames
        self._queued = 0                 # DATA payload bytes queued, all sessions
        self._inbuf = bytearray()        # a header or control frame cut by a read
        self._data_sid = 0               # the DATA frame whose payload is arriving
        self._data_left = 0              # and how much of it is still to come
        self._stray = 0                  # DATA bytes ended sessions may still receive

    # -- sending ---------------------------------------------------------------
    def open(self) -> int:
        """Start a new session (opener only); returns its id."""
        if not self.opener:
            raise LocalProtocolError("only the -L side opens sessions")
        self.highest += 1
        self.sessions[self.highest] = _Session(self.highest)
        self._add_control(HEADER.pack(OPEN, self.highest, 0))
        return self.highest

    def credit(self, sid: int) -> int:
        """How many bytes :meth:`send` accepts now for *sid* (0 if closed)."""
        s = self.sessions.get(sid)
        return 0 if s is None or s.eof_sent else s.credit

    def send(self, sid: int, data) -> None:
        s = self._live(sid)
        if s.eof_sent:
            raise LocalProtocolError(f"session {sid}: data after EOF")
        if len(data) > s.credit:
            raise LocalProtocolError(f"session {sid}: {len(data)} bytes exceed the credit")
        s.credit -= len(data)
        view = memoryview(data)
        for start in range(0, len(view), MAX_PAYLOAD):
            chunk = view[start:start + MAX_PAYLOAD]
            self._enqueue(s, (HEADER.pack(DATA, sid, len(chunk)), chunk), len(chunk))

    def send_external(self, sid: int, payload) -> None:
        """Queue one DATA frame whose payload the I/O layer sends itself
        (anything with a length up to MAX_PAYLOAD, e.g. bytes in a pipe);
        :meth:`pull` hands it out after the frame header."""
        s = self._live(sid)
        n = len(payload)
        if s.eof_sent or n > s.credit or n > MAX_PAYLOAD:
            raise LocalProtocolError(f"session {sid}: cannot send {n} bytes now")
        s.credit -= n
        self._enqueue(s, (HEADER.pack(DATA, sid, n), payload), n)

    def send_eof(self, sid: int) -> None:
        s = self._live(sid)
        if not s.eof_sent:
            s.eof_sent = True
            self._enqueue(s, (HEADER.pack(EOF, sid, 0),))
            self._maybe_finish(s)

    def reset(self, sid: int, reason: str = "") -> None:
        """Abort *sid*; its queued data is discarded."""
        s = self.sessions.pop(sid, None)
        if s is None:
            return
        self._queued -= s.queued
        if not s.eof_received:
            self._stray += s.allowed       # what the peer may have in flight
        payload = reason.encode(errors="replace")[:MAX_REASON]
        self._add_control(HEADER.pack(RESET, sid, len(payload)) + payload)

    def consumed(self, sid: int, n: int) -> None:
        """*n* received bytes of *sid* were delivered locally: return credit."""
        s = self.sessions.get(sid)
        if s is None:
            return
        s.ungranted += n
        if s.ungranted >= GRANT_STEP or (s.ungranted and s.allowed < GRANT_STEP):
            s.allowed += s.ungranted
            self._add_control(HEADER.pack(WINDOW, sid, 4) + struct.pack("!I", s.ungranted))
            s.ungranted = 0

    def wants_to_write(self) -> bool:
        return bool(self._control or self._refused_at < len(self._refused) or self._ready)

    def control_backlog(self) -> int:
        """Bytes of control frames (grants, resets) waiting to be sent."""
        refused = len(self._refused) - self._refused_at
        return len(self._control) + refused * (HEADER.size + len(REFUSED))

    def payload_pending(self) -> tuple[int, int] | None:
        """(session id, bytes) of the DATA payload whose rest is still to come
        from the link, when a read ended inside one; else None.  The I/O
        layer may move those bytes itself (:meth:`payload_moved`)."""
        if self._data_left and self._data_sid in self.sessions:
            return self._data_sid, self._data_left
        return None

    def payload_moved(self, n: int) -> None:
        """*n* bytes of the pending payload went from the link to its local
        end without passing through :meth:`receive` (splice)."""
        if not 0 < n <= self._data_left:
            raise LocalProtocolError(f"{n} payload bytes moved, {self._data_left} pending")
        self._data_left -= n

    def queued(self, sid: int | None = None) -> int:
        """DATA payload bytes waiting to be sent, for *sid* or all sessions."""
        if sid is None:
            return self._queued
        s = self.sessions.get(sid)
        return 0 if s is None else s.queued

    def pull(self, budget: int = 4 * MAX_PAYLOAD) -> list:
        """Buffers to write to the link, about *budget* bytes, in fair order."""
        out: list = []
        size = 0
        if self._control:                     # all of them, in one buffer
            out.append(bytes(self._control))
            size += len(self._control)
            self._control = bytearray()
        if self._refused_at < len(self._refused):
            answers = bytearray()
            while self._refused_at < len(self._refused) and size + len(answers) < budget:
                answers += HEADER.pack(RESET, self._refused[self._refused_at], len(REFUSED))
                answers += REFUSED
                self._refused_at += 1
            out.append(bytes(answers))
            size += len(answers)
            if self._refused_at == len(self._refused):
                self._refused, self._refused_at = array.array("I"), 0
            elif self._refused_at > len(self._refused) // 2:
                del self._refused[:self._refused_at]
                self._refused_at = 0
        while self._ready and size < budget:
            sid = self._ready.popleft()
            s = self.sessions.get(sid)
            if s is None or not s.queue:
                continue
            frame = s.queue.popleft()
            for part in frame:
                out.append(part)
                size += len(part)
            if len(frame) > 1:                # a DATA frame: header and payload
                s.queued -= len(frame[1])
                self._queued -= len(frame[1])
            if s.queue:
                self._ready.append(sid)       # round robin: back of the line
            else:
                self._maybe_finish(s)
        return out

    # -- receiving -------------------------------------------------------------
    def receive(self, data) -> list:
        """Bytes read from the link; returns the events they complete
        (see :meth:`receive_into`)."""
        events: list = []
        self.receive_into(data, events.append)
        return events

    def receive_into(self, data, deliver) -> None:
        """Bytes read from the link; calls *deliver* with each event they
        complete, in order, before it looks at the next frame.

        DATA payloads are streamed: each :class:`Data` is a view of *data*
        (no copy), and a frame cut by the end of a read is delivered in two
        or more parts, so only frame headers and small control frames are
        ever assembled here.  The window is charged for the whole frame when
        its header arrives.  A payload is valid until *data* is used again:
        copy what is kept.
        """
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if self._data_left:                      # the rest of a DATA payload
                take = min(self._data_left, end - pos)
                self._data_left -= take
                if take and self._data_sid in self.sessions:
                    deliver(Data(self._data_sid, view[pos:pos + take]))
                pos += take
                continue
            if self._inbuf or end - pos < HEADER.size:
                # A header (or small control frame) cut by a read: assemble it.
                buf = self._inbuf
                if len(buf) < HEADER.size:
                    take = min(HEADER.size - len(buf), end - pos)
                    buf += view[pos:pos + take]
                    pos += take
                    if len(buf) < HEADER.size:
                        return
                kind, sid, length = self._check(*HEADER.unpack_from(buf))
                if kind == DATA:
                    self._inbuf = bytearray()
                    self._data_header(sid, length)
                    continue
                take = min(HEADER.size + length - len(buf), end - pos)
                buf += view[pos:pos + take]
                pos += take
                if len(buf) < HEADER.size + length:
                    return
                self._inbuf = bytearray()
                self._frame(kind, sid, bytes(buf[HEADER.size:]), deliver)
                continue
            kind, sid, length = self._check(*HEADER.unpack_from(view, pos))
            if kind == DATA:
                pos += HEADER.size
                self._data_header(sid, length)
                continue
            if end - pos < HEADER.size + length:
                self._inbuf = bytearray(view[pos:])   # a control frame cut: at most 265 bytes
                return
            self._frame(kind, sid, view[pos + HEADER.size: pos + HEADER.size + length], deliver)
            pos += HEADER.size + length

    def _data_header(self, sid: int, length: int) -> None:
        """A DATA header: check it and charge the window for the whole
        payload, which follows (and is delivered) as it arrives."""
        if sid == 0:
            raise RemoteProtocolError("mux: DATA frame for session 0")
        if sid > self.highest:
            raise RemoteProtocolError(f"mux: DATA frame for session {sid}, never opened")
        s = self.sessions.get(sid)
        if s is None:
            # In flight when the session ended: ignored, but only within what
            # the peer could still send (the stray allowance).
            if length > self._stray:
                raise RemoteProtocolError(f"mux: data for ended session {sid} beyond its "
                                          f"window")
            self._stray -= length
        else:
            if s.eof_received:
                raise RemoteProtocolError(f"mux: data after EOF on session {sid}")
            if length > s.allowed:
                raise RemoteProtocolError(f"mux: session {sid} overran its window")
            s.allowed -= length
        self._data_sid, self._data_left = sid, length

    @staticmethod
    def _check(kind: int, sid: int, length: int) -> tuple[int, int, int]:
        if kind not in FRAME_NAMES:
            raise RemoteProtocolError(f"mux: unknown frame type {kind}")
        limit = _PAYLOAD_LIMIT[kind]
        if length > limit:
            raise RemoteProtocolError(
                f"mux: {FRAME_NAMES[kind]} frame of {length} bytes (at most {limit})")
        return kind, sid, length

    def _frame(self, kind: int, sid: int, payload, deliver) -> None:
        name = FRAME_NAMES[kind]
        if sid == 0:
            raise RemoteProtocolError(f"mux: {name} frame for session 0")
        if kind == OPEN:
            if self.opener:
                raise RemoteProtocolError("mux: the -c side tried to open a session")
            if sid <= self.highest:
                raise RemoteProtocolError(f"mux: bad OPEN for session {sid}")
            self.highest = sid
            if len(self.sessions) >= self.max_sessions:
                self._refused.append(sid)       # answered by RESET in pull()
                return
            self.sessions[sid] = _Session(sid)
            deliver(Opened(sid))
            return
        if sid > self.highest:
            raise RemoteProtocolError(f"mux: {name} frame for session {sid}, never opened")
        s = self.sessions.get(sid)
        if s is None:
            return                     # in flight when the session ended: ignored
        if kind == EOF:
            if s.eof_received:
                raise RemoteProtocolError(f"mux: bad EOF on session {sid}")
            s.eof_received = True
            deliver(Eof(sid))
            self._maybe_finish(s)
        elif kind == RESET:
            del self.sessions[sid]
            self._queued -= s.queued
            deliver(Reset(sid, bytes(payload).decode(errors="replace")))
        elif kind == WINDOW:
            if len(payload) != 4:
                raise RemoteProtocolError(f"mux: bad WINDOW on session {sid}")
            (increment,) = struct.unpack("!I", bytes(payload))
            if s.credit + increment > 2 ** 31:
                raise RemoteProtocolError(f"mux: window overflow on session {sid}")
            was_empty = s.credit == 0
            s.credit += increment
            if was_empty and increment and not s.eof_sent:
                deliver(Credit(sid))

    # -- internals -------------------------------------------------------------
    def _live(self, sid: int) -> _Session:
        s = self.sessions.get(sid)
        if s is None:
            raise LocalProtocolError(f"session {sid} is not open")
        return s

    def _enqueue(self, s: _Session, frame: tuple, size: int = 0) -> None:
        if not s.queue:
            self._ready.append(s.sid)
        s.queue.append(frame)
        s.queued += size
        self._queued += size

    def _add_control(self, frame: bytes) -> None:
        self._control += frame

    def _maybe_finish(self, s: _Session) -> None:
        """Both EOFs exchanged: forget the session once its frames are out."""
        if s.eof_sent and s.eof_received and not s.queue:
            self.sessions.pop(s.sid, None)
