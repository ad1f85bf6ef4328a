"""What a sender keeps until the peer confirms it: the bytes to send again on a new link.

A resumed link starts with the peer saying how much of this direction it
has (:mod:`punchcat.stream`); everything after that must still be at hand.
:class:`Ring` holds it: one buffer of :data:`punchcat.stream.RETAIN` bytes
used round and round, so keeping costs one copy of each byte (into the
ring, from the input) and no allocation.  Positions are the stream's: the
ring holds ``[start, end)``; :meth:`Ring.release` drops what the peer
confirmed, :meth:`Ring.span` gives a view of what to send from any
position in between.  A sender whose ring is full waits for an ACK.

A regular file needs no ring: what was sent can be read again from the file
(``sendfile`` with an offset), so the zero-copy path stays zero-copy and
only the positions are kept (:class:`punchcat.relay` does that).
"""

from __future__ import annotations

from .errors import LocalProtocolError


class Ring:
    """Bytes ``[start, end)`` of one direction, at most *capacity* of them."""

    def __init__(self, capacity: int, start: int = 0):
        self._buf = bytearray(capacity)
        self.capacity = capacity
        self.start = start               # the first position still kept
        self.end = start                 # one past the last position kept

    def __len__(self) -> int:
        return self.end - self.start

    def room(self) -> int:
        return self.capacity - len(self)

    def writable(self) -> memoryview:
        """Where the next bytes go (contiguous, may be shorter than :meth:`room`):
        fill it, then :meth:`wrote`."""
        at = self.end % self.capacity
        return memoryview(self._buf)[at:at + min(self.room(), self.capacity - at)]

    def wrote(self, n: int) -> None:
        if not 0 <= n <= self.room():
            raise LocalProtocolError(f"the ring: {n} bytes written, {self.room()} free")
        self.end += n

    def append(self, data) -> int:
        """Copy as much of *data* as fits; returns how much."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            space = self.writable()
            if not len(space):
                break
            n = min(len(space), len(view) - done)
            space[:n] = view[done:done + n]
            self.wrote(n)
            done += n
        return done

    def span(self, position: int, limit: int) -> memoryview:
        """A view of the bytes from *position* on (contiguous, at most *limit*)."""
        if not self.start <= position <= self.end:
            raise LocalProtocolError(f"the ring holds [{self.start}, {self.end}), "
                                     f"not position {position}")
        at = position % self.capacity
        n = min(limit, self.end - position, self.capacity - at)
        return memoryview(self._buf)[at:at + n]

    def release(self, position: int) -> None:
        """The peer confirmed everything before *position*: forget it."""
        if position > self.end:
            raise LocalProtocolError(f"the ring: release to {position}, only {self.end} held")
        self.start = max(self.start, position)
