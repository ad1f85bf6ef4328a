"""The forwarder's side of the stream: the mux's bytes in records, non-blocking.

The multiplexer (:mod:`punchcat.mux`) speaks one byte stream; between the
two forwarders it travels in the stream's records (:mod:`punchcat.stream`)
over whatever link is current, so that every session survives a link that
breaks.  :class:`StreamEnd` is that layer for the forwarder's event loop:

* outgoing, the mux's frames are copied into the retention ring (a frame
  payload still in a kernel pipe, :class:`~punchcat.channel.Spliced`, is
  read out of it into the ring) and sent from there as DATA records, so
  what the peer has not confirmed can go again on a new link; the ring's
  room is what the mux may hand out, so the ring, not the mux, bounds it;
* incoming, records are parsed as they come and DATA payloads handed to
  the mux as views (no copy), or, on a plain link, spliced by the
  forwarder straight to a local socket (:meth:`data_pending`,
  :meth:`moved`); ACKs go out every :data:`punchcat.stream.ACK_EVERY` bytes.

The mux's streams have no end of their own: a forwarder stops on a signal
and says so with ABORT (or, at the end, EOF); either ends the peer's link
run normally (a ``-k`` server punches again).
"""

from __future__ import annotations

import os

from . import stream
from .channel import Spliced
from .errors import LinkLost, RemoteProtocolError
from .retention import Ring
from .status import printable


class StreamEnd:
    """Records to and from the current link, for the forwarder's loop."""

    def __init__(self) -> None:
        self.offsets = stream.Offsets()
        self.ring = Ring(stream.RETAIN)
        self.peer_key: bytes | None = None     # the peer's KEY material (plain links)
        self.channel = None
        self.rx = stream.Receiver()
        self.peer_done: str | None = None      # why the peer ended the link (EOF, ABORT)
        self._resuming = False
        self._first = True

    # -- a link ---------------------------------------------------------------
    def attach(self, channel, opening: list[bytes], resuming: bool) -> None:
        self.channel = channel
        self.rx = stream.Receiver()
        self.peer_done = None
        self._resuming = resuming
        self._first = True
        if opening:
            channel.queue(opening)

    @property
    def ready(self) -> bool:
        """Data may go: on a resumed link, the peer has said where it stands."""
        return not self._resuming

    # -- outgoing ---------------------------------------------------------------
    def room(self) -> int:
        return self.ring.room()

    def put(self, buffers) -> None:
        """The mux's output (bytes-like, and payloads still in spools) into the ring."""
        for buf in buffers:
            if isinstance(buf, Spliced):
                self._from_spool(buf)
            elif self.ring.append(buf) != len(buf):
                raise LinkLost("internal error: the retention ring overflowed")

    def _from_spool(self, item: Spliced) -> None:
        spool = item.spool
        left = item.n
        while left:
            space = self.ring.writable()
            n = os.readv(spool.r, [space[:left]])
            self.ring.wrote(n)
            left -= n
        spool.filled -= item.n
        spool.owed -= item.n
        if spool.closing:
            spool.release()

    def fill(self, budget: int) -> None:
        """Queue DATA records for what the ring holds and the link has not
        had, up to *budget* bytes of backlog; and an ACK when one is due."""
        off = self.offsets
        if off.ack_due():
            self.channel.queue([off.ack()])
        if not self.ready:
            return
        while self.channel.backlog() < budget and off.sent < self.ring.end:
            view = self.ring.span(off.sent, stream.MAX_DATA)
            off.sent += len(view)
            self.channel.queue([stream.data_header(len(view)), view])

    def end(self, reason: str = "") -> None:
        """This side stops: ABORT with *reason* (or EOF without one)."""
        if self.channel is None:
            return
        record = (stream.abort_record(reason) if reason
                  else stream.position_record(stream.EOF, self.offsets.sent))
        self.channel.queue([record])

    # -- incoming ---------------------------------------------------------------
    def feed(self, data, mux_deliver) -> None:
        """Bytes from the link; DATA payloads go to *mux_deliver* (a view each)."""
        self.rx.feed(data, lambda event: self._event(event, mux_deliver))

    def data_pending(self) -> int:
        """Bytes of the current DATA record still to come from the link."""
        return self.rx.payload_pending()

    def moved(self, n: int) -> None:
        """*n* bytes of the DATA record went from the link around :meth:`feed`."""
        self.rx.payload_moved(n)
        self.offsets.took(n)

    def _event(self, event, mux_deliver) -> None:
        first, self._first = self._first, False
        if self._resuming and first and not isinstance(event, (stream.Resume, stream.Abort)):
            raise RemoteProtocolError("the stream: a resumed link must begin with RESUME")
        if isinstance(event, stream.Data):
            self.offsets.took(len(event.data))
            mux_deliver(event.data)
        elif isinstance(event, stream.Ack):
            self.offsets.peer_acked(event.position)
            self.ring.release(min(self.offsets.acked, self.ring.end))
        elif isinstance(event, stream.Resume):
            if not (self._resuming and first):
                raise RemoteProtocolError("the stream: RESUME in the middle of a link")
            self.offsets.resume_from(event.position)
            self.ring.release(min(self.offsets.acked, self.ring.end))
            self._resuming = False
        elif isinstance(event, stream.Key):
            if self.peer_key is not None:
                raise RemoteProtocolError("the stream: a second KEY")
            self.peer_key = event.material
        elif isinstance(event, stream.Eof):
            self.peer_done = "the peer ended the link"
        elif isinstance(event, stream.Abort):
            self.peer_done = f"the peer ended the link: {printable(event.reason)}"
