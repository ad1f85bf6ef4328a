"""The relay: input to the peer and the peer to output, until both are done.

Four directions, as in nc: input (stdin, or a target socket) is read and sent
to the net; the net is read and written to output (stdout, or the same
socket).  Each of the two flows runs in its own thread with blocking I/O,
because stdin and stdout may be regular files or /dev/null: epoll (what
``selectors.DefaultSelector`` uses on Linux) refuses them, and select and
poll accept them but call them ready at all times.  The half-close rules:

* input ends: shut down our sending side (the peer sees EOF), keep receiving;
* the peer ends its side: everything has been written out, that flow is
  done (a socket output is shut down for writing); keep sending input;
* both done: close the connection, status 0;
* a flow fails (connection reset, output closed): stop everything, status 1.

Each flow picks the cheapest way the OS offers for the two ends it joins
(only on an unencrypted channel, whose socket can be handed to the kernel):

=========================  ====================================================
input is a regular file    ``sendfile`` to the socket (no copy through us)
input is a pipe            ``splice`` from the pipe to the socket
output is a pipe/file/     ``splice`` through a pipe of our own (never straight
socket                     into the output pipe: see :func:`_down_splice`)
anything else              ``read``/``recv_into`` a reused buffer, ``write``
=========================  ====================================================

None of these waits to fill a buffer: each call moves what is there, so a
line typed at a terminal is sent at once.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .channel import HAVE_SENDFILE, HAVE_SPLICE, KernelPipe, grow_pipe
from .endpoints import CONNECT_TIMEOUT, Endpoint
from .errors import InputFailed, LinkLost, OutputFailed, PunchcatError, check_interrupted
from .sockopts import gave_up

BUFSIZE = 1024 * 1024
#: Most bytes asked of one splice/sendfile call.
CHUNK = 4 * 1024 * 1024
#: Pipe size asked for (F_SETPIPE_SZ); the default is 64 KiB.
PIPE_SIZE = 1024 * 1024


@dataclass
class Stats:
    sent: int = 0
    received: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def count_sent(self, n: int) -> None:
        self.sent += n

    def count_received(self, n: int) -> None:
        self.received += n


def kind(fd: int) -> str:
    """What *fd* is: file, pipe, socket, tty or other (a device, /dev/null)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "tty" if os.isatty(fd) else "other"


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]



# -- input -> net -----------------------------------------------------------------

def _up(channel, fd: int, stats: Stats) -> None:
    """Input to the net, then half-close."""
    how = kind(fd)
    if channel.plain and HAVE_SENDFILE and how == "file":
        _up_sendfile(channel, fd, stats)
    elif channel.plain and HAVE_SPLICE and how in ("pipe", "socket"):
        _up_splice(channel, fd, stats, through_pipe=how == "socket")
    else:
        _up_copy(channel, fd, stats)
    channel.shutdown_write()


def _up_copy(channel, fd: int, stats: Stats) -> None:
    if kind(fd) == "pipe":
        grow_pipe(fd, PIPE_SIZE)
    while True:
        try:
            data = os.read(fd, BUFSIZE)
        except OSError as exc:
            raise InputFailed.from_os(exc) from None
        if not data:
            return
        channel.sendall(data)
        stats.sent += len(data)


def _up_sendfile(channel, fd: int, stats: Stats) -> None:
    sock = channel.fileno()
    while True:
        try:
            n = os.sendfile(sock, fd, None, CHUNK)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS) and stats.sent == 0:
                return _up_copy(channel, fd, stats)     # e.g. a file system without it
            if exc.errno == errno.EIO:
                raise InputFailed.from_os(exc) from None
            raise LinkLost.from_os(exc, "sending") from None
        if n == 0:
            return
        stats.sent += n


def _up_splice(channel, fd: int, stats: Stats, through_pipe: bool) -> None:
    sock = channel.fileno()
    if not through_pipe:
        grow_pipe(fd, PIPE_SIZE)
        while True:
            try:
                n = os.splice(fd, sock, CHUNK)
            except OSError as exc:
                raise LinkLost.from_os(exc, "sending") from None
            if n == 0:
                return
            stats.sent += n
    _splice_through(fd, sock, stats.count_sent, InputFailed.from_os,
                    lambda exc: LinkLost.from_os(exc, "sending"))


def _splice_through(src: int, dst: int, count: Callable[[int], None],
                    src_error: Callable[[OSError], PunchcatError],
                    dst_error: Callable[[OSError], PunchcatError]) -> None:
    """Splice *src* to *dst* through a pipe of our own until *src* ends."""
    mid = KernelPipe(PIPE_SIZE)
    try:
        while True:
            try:
                n = os.splice(src, mid.w, CHUNK)
            except OSError as exc:
                raise src_error(exc) from None
            if n == 0:
                return
            while n:
                try:
                    moved = os.splice(mid.r, dst, n)
                except OSError as exc:
                    raise dst_error(exc) from None
                n -= moved
                count(moved)
    finally:
        mid.close()


# -- net -> output ----------------------------------------------------------------

def _down(channel, fd: int, leftover: bytes, stats: Stats,
          sink_eof: Callable[[], None] | None) -> None:
    """The net to output, until the peer's EOF."""
    if leftover:
        try:
            write_all(fd, leftover)
        except OSError as exc:
            raise OutputFailed.from_os(exc) from None
        stats.received += len(leftover)
    if channel.plain and HAVE_SPLICE and kind(fd) in ("pipe", "file", "socket"):
        _down_splice(channel, fd, stats)
    else:
        _down_copy(channel, fd, stats)
    if sink_eof is not None:
        sink_eof()


def _down_copy(channel, fd: int, stats: Stats) -> None:
    if kind(fd) == "pipe":
        grow_pipe(fd, PIPE_SIZE)
    buf = bytearray(BUFSIZE)
    view = memoryview(buf)
    while True:
        n = channel.recv_into(buf)
        if n == 0:
            return
        try:
            write_all(fd, view[:n])
        except OSError as exc:
            raise OutputFailed.from_os(exc) from None
        stats.received += n


def _down_splice(channel, fd: int, stats: Stats) -> None:
    """Socket to *fd* through a pipe of our own, even when *fd* is a pipe.

    A splice from a socket straight into the output pipe would wait for
    network data while holding that pipe's lock, and a reader of the pipe
    would then block in read() even though bytes are there: a protocol
    where each side waits for the other's answer (ssh) would deadlock.
    Our own pipe has no other reader, and the second splice only moves
    bytes that are already there.
    """
    if kind(fd) == "pipe":
        grow_pipe(fd, PIPE_SIZE)
    _splice_through(channel.fileno(), fd, stats.count_received,
                    lambda exc: LinkLost.from_os(exc, "receiving"), OutputFailed.from_os)


# -- both -------------------------------------------------------------------------

#: How long a flow's failure waits for the other flow's, to report the cause.
CAUSE_GRACE = 0.5


def _first_cause(exc: PunchcatError, results: queue.Queue, channel) -> PunchcatError:
    """The error to report when a flow failed.  When the link dies, both
    flows fail, and the one that reports first may only have seen the
    consequence: the kernel gives the cause (the peer stopped answering,
    ETIMEDOUT) to one call only, and the other flow's next send then fails
    with "Broken pipe" (or its receive sees a plain end).  So for a
    consequential error the other flow's error is awaited briefly, and the
    socket asked whether the kernel was still retransmitting or probing
    when the connection ended (:func:`punchcat.sockopts.gave_up`)."""
    if not isinstance(exc, LinkLost) or exc.errno not in (errno.EPIPE, errno.ECONNRESET):
        return exc
    try:
        other = results.get(timeout=CAUSE_GRACE)
    except queue.Empty:
        other = None
    if isinstance(other, LinkLost) and other.errno == errno.ETIMEDOUT:
        return other
    if gave_up(channel.sock):
        return LinkLost.from_os(OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)),
                                exc.doing)
    return exc


def relay(channel, source_fd: int, sink_fd: int, leftover: bytes = b"",
          sink_eof: Callable[[], None] | None = None,
          progress: Callable[[Stats], None] | None = None) -> Stats:
    """Relay until both directions are done; raises on the first failure.

    *source_fd* is read and sent to the peer (stdin, or a target socket);
    what the peer sends is written to *sink_fd* (stdout, or the same socket),
    starting with *leftover*.  *sink_eof* is called when the peer has ended
    its side (to pass the half-close on to a socket).  *progress* is called
    about twice a second while data moves (for a progress line).
    """
    stats = Stats()
    results: queue.Queue = queue.Queue()

    def run(flow, *args) -> None:
        try:
            flow(*args)
            results.put(None)
        except PunchcatError as exc:
            results.put(exc)
        except BaseException as exc:      # a bug: report it rather than hang
            results.put(PunchcatError(f"internal error in the relay: {exc!r}"))

    threads = [threading.Thread(target=run, args=(_up, channel, source_fd, stats), daemon=True),
               threading.Thread(target=run, args=(_down, channel, sink_fd, leftover, stats,
                                                  sink_eof), daemon=True)]
    for t in threads:
        t.start()
    try:
        for _ in threads:
            while True:
                try:
                    exc = results.get(timeout=0.5)
                    break
                except queue.Empty:
                    check_interrupted()
                    if progress is not None:
                        progress(stats)
            if exc is not None:
                raise _first_cause(exc, results, channel)
    finally:
        stats.ended = time.monotonic()
        channel.close()
    return stats


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
