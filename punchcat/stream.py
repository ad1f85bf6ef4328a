"""The stream over the links: records, offsets and acknowledgements (sans-IO).

Theory of operation
-------------------
A punched link is as fragile as the path under it: a router reboot, a DSL
resync or a NAT that forgets an idle mapping ends the TCP connection, and
with it (measured before this layer) a 256 MiB transfer 96 MiB in.  Both
sides still know each other's address and the clock, so both can punch
again; this module is what lets the *stream* survive: both directions are
sequences of bytes numbered from 0, carried over whatever link is current
in *records*::

    type (1 byte) | length (4 bytes, big-endian) | payload

=======  ========  ==============================================================
DATA     any       the next bytes of this direction of the stream
EOF      8         this direction ends; its payload is the total data length
ACK      8         the sender of the ACK has taken this many positions of the
                   other direction into its custody (data bytes, plus one for
                   the EOF once it has come)
KEY      32        fresh random bytes: on the first link of a stream without
                   a secret, both sides' make its resume key
RESUME   8         first record on a resumed link: the positions received, so
                   the other side sends again from there
ABORT    0-200     the sender stops for a reason of its own (interrupted, its
                   output failed): no resuming; the payload says why (UTF-8)
=======  ========  ==============================================================

*Retention.*  A sender keeps what it sent until the other side acknowledges
it (:mod:`punchcat.retention`), at most :data:`RETAIN` bytes: past that it
waits.  A receiver acknowledges every :data:`ACK_EVERY` bytes and at the
EOF, so a sender blocked on a full retention is always freed.  What a
receiver acknowledges is in its custody: written out, or on its way out in
its own memory or pipe; nothing it acknowledged can be lost with a link.

*Resuming.*  When a link dies, both sides punch again (:mod:`punchcat.resume`
proves the new link continues this stream), and each sends RESUME with the
positions it has received; each then sends again from the position the
other named: nothing lost, nothing twice, nothing out of order.  A RESUME
below what was already acknowledged, or beyond what was sent, is a protocol
error (the peer lies or is not the peer).

*The end.*  A side is done when its EOF has been acknowledged and the
other's EOF has come and been acknowledged in turn; only then does it close.

Bounds: a DATA payload is never assembled (it is handed out as it arrives,
:meth:`Receiver.feed`), control records are a fixed 8 or 32 bytes, and an
unknown type or an oversized payload is a
:class:`~punchcat.errors.RemoteProtocolError`.  Nothing here touches a
socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct("!BI")
DATA, EOF, ACK, KEY, RESUME, ABORT = 1, 2, 3, 4, 5, 6
NAMES = {DATA: "DATA", EOF: "EOF", ACK: "ACK", KEY: "KEY", RESUME: "RESUME", ABORT: "ABORT"}
#: Longest ABORT reason.
MAX_REASON = 200
#: Payload sizes of the control records.
SIZES = {EOF: 8, ACK: 8, KEY: 32, RESUME: 8}
#: Largest DATA payload a sender writes and a receiver accepts (the receiver
#: streams it, so this bounds nothing in memory; it keeps headers frequent).
MAX_DATA = 16 * 1024 * 1024
#: Bytes a sender keeps for sending again: a few MiB, enough for the lab's
#: 1.8 GB/s at its RTT and for 100 Mbit/s at 300 ms.
RETAIN = 8 * 1024 * 1024
#: A receiver acknowledges at least this often (a quarter of the retention:
#: the sender never waits for long).
ACK_EVERY = RETAIN // 4
_POSITION = struct.Struct("!Q")


def record(kind: int, payload=b"") -> bytes:
    """A whole control record (DATA headers: :func:`data_header`)."""
    return HEADER.pack(kind, len(payload)) + bytes(payload)


def data_header(n: int) -> bytes:
    if not 0 < n <= MAX_DATA:
        raise LocalProtocolError(f"a DATA record of {n} bytes")
    return HEADER.pack(DATA, n)


def position_record(kind: int, position: int) -> bytes:
    """EOF, ACK or RESUME with its 8-byte position."""
    return HEADER.pack(kind, _POSITION.size) + _POSITION.pack(position)


# -- what a Receiver hands out ---------------------------------------------------
@dataclass(frozen=True)
class Data:
    data: memoryview          # a view of the bytes fed in: valid until they are reused


@dataclass(frozen=True)
class Eof:
    total: int                # the data length of this direction


@dataclass(frozen=True)
class Ack:
    position: int


@dataclass(frozen=True)
class Key:
    material: bytes


@dataclass(frozen=True)
class Resume:
    position: int


@dataclass(frozen=True)
class Abort:
    reason: str               # the peer's words: escape before showing


def abort_record(reason: str) -> bytes:
    return record(ABORT, reason.encode("utf-8", "replace")[:MAX_REASON])


class Receiver:
    """Parses the records of one link (feed it what the link gives).

    DATA payloads are handed out as they arrive, as views (no copy); the I/O
    layer may instead move the rest of a payload itself (splice) and say so
    with :meth:`payload_moved`.  Only a header or a control record cut by
    a read is assembled here (at most 37 bytes).
    """

    def __init__(self) -> None:
        self._head = bytearray()
        self._left = 0                  # DATA payload bytes still to come
        self.eof = False                # the EOF record came

    def payload_pending(self) -> int:
        """Bytes of the current DATA payload still to come from the link."""
        return self._left

    def payload_moved(self, n: int) -> None:
        """*n* payload bytes went from the link to their end around :meth:`feed`."""
        if not 0 < n <= self._left:
            raise LocalProtocolError(f"{n} payload bytes moved, {self._left} pending")
        self._left -= n

    def header_needed(self) -> int:
        """Bytes to read so that the next header (or control record) is
        complete; 0 while a DATA payload is pending."""
        if self._left:
            return 0
        if len(self._head) < HEADER.size:
            return HEADER.size - len(self._head)
        kind, length = HEADER.unpack_from(self._head)
        return max(1, HEADER.size + length - len(self._head))

    def feed(self, data, deliver) -> None:
        """Bytes from the link; calls *deliver* with each :class:`Data`,
        :class:`Eof`, :class:`Ack`, :class:`Key` or :class:`Resume`, in order."""
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                self._left -= take
                deliver(Data(view[pos:pos + take]))
                pos += take
                continue
            need = HEADER.size - len(self._head)
            if need > 0:
                take = min(need, end - pos)
                self._head += view[pos:pos + take]
                pos += take
                if len(self._head) < HEADER.size:
                    return
            kind, length = HEADER.unpack_from(self._head)
            if kind == DATA:
                if self.eof:
                    raise RemoteProtocolError("the stream: data after its EOF")
                if not 0 < length <= MAX_DATA:
                    raise RemoteProtocolError(f"the stream: a DATA record of {length} bytes")
                self._head.clear()
                self._left = length
                continue
            if kind not in SIZES and kind != ABORT:
                raise RemoteProtocolError(f"the stream: unknown record type {kind}")
            if kind == ABORT and length > MAX_REASON:
                raise RemoteProtocolError(f"the stream: an ABORT reason of {length} bytes")
            if kind != ABORT and length != SIZES[kind]:
                raise RemoteProtocolError(f"the stream: a {NAMES[kind]} record of {length} "
                                          f"bytes (not {SIZES[kind]})")
            take = min(HEADER.size + length - len(self._head), end - pos)
            self._head += view[pos:pos + take]
            pos += take
            if len(self._head) < HEADER.size + length:
                return
            payload = bytes(self._head[HEADER.size:])
            self._head.clear()
            if kind == KEY:
                deliver(Key(payload))
                continue
            if kind == ABORT:
                deliver(Abort(payload.decode("utf-8", "replace")))
                continue
            (position,) = _POSITION.unpack(payload)
            if kind == EOF:
                self.eof = True
                deliver(Eof(position))
            elif kind == ACK:
                deliver(Ack(position))
            else:
                deliver(Resume(position))


class Offsets:
    """Where the two directions stand, across links (one per stream).

    Sending: *sent* data bytes given to a link, *acked* positions the peer
    confirmed, *eof* the data length once the input ended (its EOF is
    position ``eof``, so everything is confirmed at ``eof + 1``).
    Receiving: *received* positions taken into our custody, *acked_out* the
    last ACK sent, *peer_eof* the peer's data length once its EOF came.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.eof: int | None = None
        self.eof_sent = False
        self.received = 0
        self.acked_out = 0
        self.peer_eof: int | None = None

    # -- sending -------------------------------------------------------------
    def unacked(self) -> int:
        return self.sent - self.acked

    def peer_acked(self, position: int) -> int:
        """An ACK came; returns how many positions it newly confirms."""
        top = self.sent + (1 if self.eof_sent else 0)
        if position > top:
            raise RemoteProtocolError(f"the stream: ACK of {position}, only {top} were sent")
        if position < self.acked:
            return 0                     # an older ACK overtaken by a newer one
        gained = position - self.acked
        self.acked = position
        return gained

    def delivered_all(self) -> bool:
        """Everything this side sends, EOF included, has been confirmed."""
        return self.eof is not None and self.acked == self.eof + 1

    def resume_from(self, position: int) -> None:
        """The peer's RESUME: send again from *position*."""
        top = self.sent + (1 if self.eof_sent else 0)
        if not self.acked <= position <= top:
            raise RemoteProtocolError(f"the stream: RESUME from {position}, but {self.acked} "
                                      f"were confirmed and {top} sent")
        self.acked = position
        if self.eof_sent and position <= self.sent:
            self.eof_sent = False        # the EOF goes again after the data
        self.sent = min(self.sent, position)

    # -- receiving -----------------------------------------------------------
    def took(self, n: int) -> None:
        self.received += n

    def peer_ended(self, total: int) -> None:
        if total != self.received:
            raise RemoteProtocolError(f"the stream: EOF at {total}, {self.received} came")
        self.peer_eof = total
        self.received += 1               # the EOF's own position

    def ack_due(self, force: bool = False) -> bool:
        """An ACK is worth sending: enough came since the last, or the EOF."""
        owed = self.received - self.acked_out
        return owed > 0 and (force or owed >= ACK_EVERY or self.peer_eof is not None)

    def ack(self) -> bytes:
        self.acked_out = self.received
        return position_record(ACK, self.received)

    def finished(self) -> bool:
        """Both directions done: ours confirmed, the peer's come and confirmed."""
        return (self.delivered_all() and self.peer_eof is not None
                and self.acked_out == self.received)
