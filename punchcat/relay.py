"""Pipe mode: input to the peer and the peer to output, over one link after another.

Four directions, as in nc: input (stdin, or a target socket) is read and sent
to the net; the net is read and written to output (stdout, or the same
socket).  Each flow runs in its own thread with blocking calls on its local
end (:mod:`punchcat.ends`).  What travels is the stream's records
(:mod:`punchcat.stream`), and the stream outlives a link: :class:`PipeStream`
keeps the positions, the retention ring and the local ends, and
:meth:`PipeStream.run_link` moves data over one link until the stream is
done, the link breaks (:class:`~punchcat.errors.LinkLost`: the session may
punch a new one and call it again) or :meth:`PipeStream.interrupt` asks it
to let go of the link (a better one was found).

The half-close rules, in records:

* input ends: send EOF after the last byte (the peer's output ends), keep
  receiving;
* the peer's EOF comes: everything before it has been written out; that
  flow is done (a socket output is shut down for writing); keep sending;
* both done, our EOF confirmed by the peer and its EOF confirmed by us:
  close the link, status 0;
* a local end fails (output closed, input unreadable): tell the peer why
  (ABORT), stop, status 1; the peer stops too, with that reason.

Who sends what: only the sending thread writes to the link (DATA, EOF, and
the ACKs the receiving thread asks for through a wake-up pipe), so records
never interleave and the sending thread never waits on the receiving one; a
sender whose retention is full waits for an ACK, which the receiving thread
always delivers, since it never waits on the sender.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import stream
from .endpoints import CONNECT_TIMEOUT, Endpoint
from .ends import CHUNK, Input, Output
from .errors import (InputFailed, LinkLost, OutputFailed, PeerStopped, PunchcatError,
                     RemoteProtocolError, Tampered, check_interrupted)
from .retention import Ring
from .sockopts import gave_up
from .status import printable

#: Read buffer of the receiving thread (copying path).
BUFSIZE = 1024 * 1024
#: How long a flow's failure waits for the other flow's, to report the cause.
CAUSE_GRACE = 0.5
#: How long a signal waits for the sending thread to finish its record.
STOP_GRACE = 0.3


@dataclass
class Stats:
    sent: int = 0
    received: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class _Stop(Exception):
    """The link is let go on purpose (interrupt())."""


class _Link:
    """One link's run: its channel, its threads' signals and the records' order."""

    def __init__(self, channel, resuming: bool, opening: list[bytes]):
        self.channel = channel
        self.resuming = resuming           # a RESUME must come first, before any data
        self.opening = opening             # what this side sends first (KEY, RESUME)
        self.first = True                  # no record from the peer yet
        self.peer_resumed = not resuming
        self.stop = threading.Event()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.results: queue.Queue = queue.Queue()

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass                           # already pending

    def drain(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self) -> None:
        select.select([self.wake_r], [], [])
        self.drain()

    def release(self, how: int | None = socket.SHUT_RDWR) -> None:
        """Stop both threads: whatever they block on in the link fails now
        (with SHUT_RD only the receiving side: the link can still say why;
        with None neither: only between two records)."""
        self.stop.set()
        self.wake()
        if how is None:
            return
        try:
            self.channel.sock.shutdown(how)
        except OSError:
            pass

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)


class PipeStream:
    """Pipe mode's stream: the local ends and where both directions stand, across links."""

    def __init__(self, source_fd: int, sink_fd: int,
                 sink_eof: Callable[[], None] | None = None):
        self.input = Input(source_fd)
        self.output = Output(sink_fd, sink_eof)
        self.offsets = stream.Offsets()
        self._ring = Ring(stream.RETAIN)
        self._size = 0                     # a regular file's size, in positions, as last seen
        self._lock = threading.Lock()      # offsets and ring, between the two threads
        self.stats = Stats()
        self.peer_key: bytes | None = None   # the peer's KEY material (plain links)
        self._link: _Link | None = None
        self._buf = bytearray(BUFSIZE)
        self._can_abort = True             # no record of ours is cut off mid-way

    # -- the session's side ------------------------------------------------------
    def finished(self) -> bool:
        with self._lock:
            return self.offsets.finished()

    def interrupt(self) -> None:
        """Let go of the current link (from another thread): run_link returns False."""
        link = self._link
        if link is not None:
            link.release()

    def run_link(self, channel, leftover: bytes = b"", opening: list[bytes] = (),
                 resuming: bool = False,
                 progress: Callable[[Stats], None] | None = None) -> bool:
        """Move data over *channel* until the stream is done (True), or
        :meth:`interrupt` lets go of it (False).  A link that breaks raises
        :class:`LinkLost`; the positions and the ring stay, for the next.
        *opening*: records this side sends first; *resuming*: the peer's
        first record must be its RESUME."""
        link = self._link = _Link(channel, resuming, list(opening))
        threads = [threading.Thread(target=self._flow, args=(link, self._send), daemon=True),
                   threading.Thread(target=self._flow, args=(link, self._receive, leftover),
                                    daemon=True)]
        for t in threads:
            t.start()
        try:
            try:
                first = self._wait(link, progress)
            except BaseException:
                # A signal: let the threads go at once, so that the peer hears why.
                self._stop_sending(link, threads[0])
                raise
            if isinstance(first, Tampered):
                # The peer is to hear why; the link is still read (a close
                # with unread bytes would reset it: punchcat.channel).
                self._stop_sending(link, threads[0], None)
                raise first
            if first is not None:
                link.release()
                for t in threads:
                    t.join()
                raise self._cause(first, link)
            return not link.stop.is_set() or self.finished()
        finally:
            for t in threads:
                t.join(5)
            self._link = None
            link.close()
            if self.offsets.peer_eof is not None:
                self.stats.received = self.offsets.peer_eof

    def _stop_sending(self, link: _Link, sender: threading.Thread,
                      how: int | None = socket.SHUT_RD) -> None:
        """Let go of the link, the sending thread between two records if it
        can, so that an ABORT can still follow (:meth:`abort`)."""
        link.release(how)
        sender.join(STOP_GRACE)
        self._can_abort = not sender.is_alive()
        if not self._can_abort:
            link.release()                  # stuck mid-record: no ABORT then

    def abort(self, channel, reason: str) -> None:
        """Tell the peer this side stops for *reason* (best effort, never
        blocks long; not when a record was cut off mid-way)."""
        if not self._can_abort:
            return
        try:
            channel.sock.settimeout(1.0)
            channel.send_parts([stream.abort_record(reason)])
        except (OSError, PunchcatError):
            pass

    def close(self) -> None:
        self.output.close()

    def _wait(self, link: _Link, progress) -> PunchcatError | None:
        """Both threads' results; the first failure (None when both are done)."""
        for _ in range(2):
            while True:
                try:
                    exc = link.results.get(timeout=0.5)
                    break
                except queue.Empty:
                    check_interrupted()
                    if progress is not None:
                        progress(self.stats)
            if isinstance(exc, _Stop):
                link.release()
                continue
            if exc is not None:
                return exc
            if self.finished():
                link.release()             # the other thread may wait for a peer that is done
        return None

    def _cause(self, exc: PunchcatError, link: _Link) -> PunchcatError:
        """The error to report when a flow failed.  When the link dies, both
        flows fail, and the one that reports first may only have seen the
        consequence: the kernel gives the cause (the peer stopped answering,
        ETIMEDOUT) to one call only, and the other flow's next call then
        fails with "Broken pipe" (or its receive sees a plain end).  So for
        a consequential error the other flow's error is looked at, and the
        socket asked whether the kernel was still retransmitting or probing
        when the connection ended (:func:`punchcat.sockopts.gave_up`)."""
        if not isinstance(exc, LinkLost) or exc.errno not in (errno.EPIPE, errno.ECONNRESET,
                                                              None):
            return exc
        try:
            other = link.results.get(timeout=CAUSE_GRACE)
        except queue.Empty:
            other = None
        if isinstance(other, LinkLost) and other.errno == errno.ETIMEDOUT:
            return other
        if isinstance(other, (PeerStopped, RemoteProtocolError, Tampered)):
            return other                   # the peer's word, or its alert
        if gave_up(link.channel.sock):
            return LinkLost.from_os(OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)),
                                    exc.doing or "receiving")
        return exc

    def _flow(self, link: _Link, flow, *args) -> None:
        try:
            flow(link, *args)
            link.results.put(None)
        except _Stop as exc:
            link.results.put(exc)
        except PunchcatError as exc:
            if link.stop.is_set() and isinstance(exc, LinkLost):
                link.results.put(_Stop())    # the link was let go under it
            else:
                link.results.put(exc)
        except BaseException as exc:      # a bug: report it rather than hang
            link.results.put(PunchcatError(f"internal error in the relay: {exc!r}"))

    # -- input -> net ----------------------------------------------------------------
    def _send(self, link: _Link) -> None:
        channel, off = link.channel, self.offsets
        if link.opening:
            channel.send_parts(link.opening)
        by_position = self.input.by_position(channel.plain)
        while True:
            if link.stop.is_set():
                raise _Stop()
            with self._lock:
                ack = off.ack() if off.ack_due() else None
                done = off.finished()
            if ack is not None:
                channel.send_parts([ack])
                continue
            if done:
                return
            if not link.peer_resumed:
                link.wait()                 # nothing goes before we know where the peer is
                continue
            with self._lock:
                pending = (self._known_end(by_position) - off.sent)
                eof_now = self.input.ended and pending == 0 and not off.eof_sent
            if pending > 0:
                self._send_data(channel, by_position, pending)
            elif eof_now:
                with self._lock:
                    off.eof = off.sent
                    off.eof_sent = True
                channel.send_parts([stream.position_record(stream.EOF, off.eof)])
            elif not self.input.ended and (by_position or self._ring.room()):
                self._take_input(link, by_position)
            else:
                link.wait()                 # ring full, or all sent: an ACK or the end

    def _known_end(self, by_position: bool) -> int:
        """One past the last position this side could send now."""
        return self._size if by_position else self._ring.end

    def _take_input(self, link: _Link, by_position: bool) -> None:
        if by_position:
            size = self.input.size()
            if size <= self._size:
                self.input.ended = True     # like cat: what comes after the end is not sent
            self._size = max(self._size, size)
            return
        if not self.input.wait(link.wake_r):
            link.drain()
            return                          # woken: an ACK to send, or the stop
        n = self.input.read_into(self._ring.writable())
        with self._lock:
            self._ring.wrote(n)

    def _send_data(self, channel, by_position: bool, pending: int) -> None:
        """The next DATA record.  Its bytes count as sent before they go: the
        peer may confirm them before this call returns, and a send that
        fails breaks the link, whose successor starts from the peer's word."""
        off = self.offsets
        if by_position:
            n = min(pending, CHUNK)
            with self._lock:
                start = off.sent
                off.sent += n
                self.stats.sent = max(self.stats.sent, off.sent)
            channel.send_parts([stream.data_header(n)], more=True)
            done = 0
            while done < n:
                done += self.input.sendfile(channel.fileno(), start + done, n - done)
            return
        with self._lock:
            view = self._ring.span(off.sent, min(pending, stream.MAX_DATA))
            off.sent += len(view)
            self.stats.sent = max(self.stats.sent, off.sent)
        channel.send_parts([stream.data_header(len(view)), view])

    # -- net -> output ----------------------------------------------------------------
    def _receive(self, link: _Link, leftover: bytes) -> None:
        channel, rx = link.channel, stream.Receiver()
        handle = lambda event: self._event(link, event)   # noqa: E731
        if leftover:
            rx.feed(leftover, handle)
        splice = self.output.can_splice(channel.plain)
        view = memoryview(self._buf)
        while not self.finished():
            pending = rx.payload_pending()
            if splice and pending:
                n = self.output.splice_from(channel.fileno(), min(pending, CHUNK))
                if n == 0:
                    return self._link_ended()
                rx.payload_moved(n)
                self._took(link, n)
                continue
            size = rx.header_needed() if splice else BUFSIZE
            n = channel.recv_into(view[:size])
            if n == 0:
                return self._link_ended()
            rx.feed(view[:n], handle)

    def _link_ended(self) -> None:
        if not self.finished():
            raise LinkLost("connection lost while receiving: the link ended before the "
                           "stream did")

    def _took(self, link: _Link, n: int) -> None:
        with self._lock:
            self.offsets.took(n)
            self.stats.received = self.offsets.received
            due = self.offsets.ack_due()
        if due:
            link.wake()

    def _event(self, link: _Link, event) -> None:
        first, link.first = link.first, False
        if link.resuming and first and not isinstance(event, (stream.Resume, stream.Abort)):
            raise RemoteProtocolError("the stream: a resumed link must begin with RESUME")
        if isinstance(event, stream.Data):
            self.output.write(event.data)
            self._took(link, len(event.data))
        elif isinstance(event, stream.Ack):
            with self._lock:
                self.offsets.peer_acked(event.position)
                self._ring.release(min(self.offsets.acked, self._ring.end))
            link.wake()
        elif isinstance(event, stream.Eof):
            with self._lock:
                self.offsets.peer_ended(event.total)
            self.output.end()
            link.wake()
        elif isinstance(event, stream.Resume):
            if not (link.resuming and first):
                raise RemoteProtocolError("the stream: RESUME in the middle of a link")
            with self._lock:
                self.offsets.resume_from(event.position)
                self._ring.release(min(self.offsets.acked, self._ring.end))
            link.peer_resumed = True
            link.wake()
        elif isinstance(event, stream.Key):
            if self.peer_key is not None:
                raise RemoteProtocolError("the stream: a second KEY")
            self.peer_key = event.material
        elif isinstance(event, stream.Abort):
            raise PeerStopped(f"the peer stopped: {printable(event.reason) or 'no reason given'}")


def relay(channel, source_fd: int, sink_fd: int, leftover: bytes = b"",
          sink_eof: Callable[[], None] | None = None,
          progress: Callable[[Stats], None] | None = None) -> Stats:
    """One link, no resuming: relay until both directions are done; raises
    on the first failure (tests and benchmarks of the relay alone)."""
    pipe = PipeStream(source_fd, sink_fd, sink_eof)
    try:
        pipe.run_link(channel, leftover, progress=progress)
    finally:
        pipe.stats.ended = time.monotonic()
        pipe.close()
        channel.close()
    return pipe.stats


def connect_target(target: Endpoint) -> socket.socket:
    """-c against a peer in pipe mode (ssh's ProxyCommand): the one raw
    session's connection to *target*."""
    try:
        local = socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise PunchcatError(f"cannot connect to {target}: {exc.strerror or exc}") from None
    local.settimeout(None)
    return local


__all__ = ["PipeStream", "Stats", "connect_target", "relay", "InputFailed", "OutputFailed"]
