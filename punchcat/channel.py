"""The agreed connection as a byte stream: what the relay and the mux use.

A channel offers two ways to move bytes:

* blocking calls for the relay's two threads (:meth:`recv_into`,
  :meth:`sendall`, :meth:`shutdown_write`); and
* non-blocking calls for the multiplexer's event loop (:meth:`read`,
  :meth:`queue`, :meth:`flush`, :meth:`backlog`).  :meth:`read` returns a
  view of one buffer that the next call reuses: reading allocates nothing,
  and nothing the peer sent can pin memory beyond that buffer unless the
  caller copies it (:mod:`punchcat.forward` copies only what a local end
  does not take at once).

:class:`PlainChannel` is the TCP connection itself (its file descriptor
also serves the zero-copy paths of :mod:`punchcat.relay`);
an encrypted channel lives in :mod:`punchcat.secure`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from .errors import LinkLost
from .sockopts import PORTABLE

#: Most buffers handed to one sendmsg() call.
IOV_MAX = 64
#: Most bytes one non-blocking read() returns (its buffer is reused).
READ_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
MSG_MORE = getattr(socket, "MSG_MORE", 0)
#: The zero-copy calls, where the OS has them (off with PUNCHCAT_PORTABLE=1).
HAVE_SPLICE = hasattr(os, "splice") and not PORTABLE
HAVE_SENDFILE = hasattr(os, "sendfile") and not PORTABLE


def grow_pipe(fd: int, size: int) -> None:
    """Ask for a pipe of *size* bytes (the default is 64 KiB); keep the
    default if the OS refuses (not a pipe, over /proc/sys/fs/pipe-max-size)."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:
        pass


class KernelPipe:
    """An OS pipe of our own, to splice between two ends inside the kernel."""

    def __init__(self, size: int):
        self.r, self.w = os.pipe()
        grow_pipe(self.w, size)

    def close(self) -> None:
        if self.r >= 0:
            os.close(self.r)
            os.close(self.w)
            self.r = self.w = -1


class Spool(KernelPipe):
    """Bytes read from a local socket, held in a kernel pipe until the mux's
    frame for them is pulled (the forwarder reads them into the stream's
    ring then: one copy, not two).

    *filled* counts the bytes in it; *owed* those that frames queued in the
    mux still have to take.  :meth:`release` closes it once nothing is owed.
    """

    def __init__(self, size: int = 512 * 1024):
        super().__init__(size)
        self.cap = fcntl.fcntl(self.w, F_GETPIPE_SZ)
        self.filled = 0
        self.owed = 0
        self.closing = False

    def room(self) -> int:
        return self.cap - self.filled

    def release(self) -> None:
        self.closing = True
        if self.owed == 0:
            self.close()


class Spliced:
    """A frame payload still in a :class:`Spool`: *n* bytes, read out of it
    into the stream's retention ring (:mod:`punchcat.muxlink`)."""

    __slots__ = ("spool", "n")

    def __init__(self, spool: Spool, n: int):
        self.spool, self.n = spool, n

    def __len__(self) -> int:
        return self.n


def send_some(sock: socket.socket, out: list) -> int:
    """Write the leading buffers of *out* (memoryviews) that the socket takes
    now, removing what was written; returns the byte count (0 if none fit)."""
    try:
        sent = sock.sendmsg(out[:IOV_MAX])
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as exc:
        if exc.errno == errno.ENOBUFS:
            return 0
        raise LinkLost.from_os(exc, "sending") from None
    left = sent
    while left:
        head = out[0]
        if left >= len(head):
            left -= len(head)
            out.pop(0)
        else:
            out[0] = head[left:]
            left = 0
    return sent


class Channel:
    """What both kinds of channel share: the socket and its closing."""

    plain = True

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._out: list = []          # what the event loop queued, not yet written
        self._out_bytes = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, timeout: float) -> bool:
        """Send what the event loop queued, blocking at most *timeout*
        seconds; True when all of it went."""
        deadline = time.monotonic() + timeout
        try:
            while self._out:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                self._out_bytes -= send_some(self.sock, self._out)
        except (OSError, LinkLost):
            return False
        return True

    def backlog(self) -> int:
        return self._out_bytes

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def close_after_last_word(self, timeout: float) -> None:
        """Close so that what was sent last (an ABORT, TLS's alert) is read:
        a close with unread bytes would send a reset, and the peer's kernel
        would drop what it had not read.  So: end our direction, read and
        discard until the peer closes too or *timeout* seconds pass."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(1 << 16):
                    break
        except OSError:
            pass
        self.close()



class PlainChannel(Channel):
    """The punched TCP connection, unencrypted."""

    _rbuf: bytearray | None = None    # read()'s buffer, made on first use

    # -- blocking (relay threads) -------------------------------------------
    def recv_into(self, buf) -> int:
        try:
            return self.sock.recv_into(buf)
        except OSError as exc:
            raise LinkLost.from_os(exc, "receiving") from None

    def sendall(self, data) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise LinkLost.from_os(exc, "sending") from None

    def send_parts(self, parts, more: bool = False) -> None:
        """Send *parts* (bytes-like) in order, in as few calls as the socket
        allows; *more*: the next send follows at once (MSG_MORE: one segment)."""
        out = [memoryview(p).cast("B") for p in parts if len(p)]
        flags = MSG_MORE if more else 0
        while out:
            try:
                sent = self.sock.sendmsg(out[:IOV_MAX], [], flags)
            except OSError as exc:
                raise LinkLost.from_os(exc, "sending") from None
            while sent:
                if sent >= len(out[0]):
                    sent -= len(out.pop(0))
                else:
                    out[0] = out[0][sent:]
                    sent = 0

    # -- non-blocking (mux event loop) ----------------------------------------
    def read(self, size: int = READ_SIZE):
        """Bytes available now, as a view of a buffer that the next call
        reuses (copy what you keep); b"" at end of stream; None if none yet."""
        if self._rbuf is None:
            self._rbuf = bytearray(READ_SIZE)
        try:
            n = self.sock.recv_into(self._rbuf, min(size, READ_SIZE))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise LinkLost.from_os(exc, "receiving") from None
        return memoryview(self._rbuf)[:n] if n else b""

    def queue(self, buffers) -> None:
        """Buffers (bytes-like), in order; they must stay unchanged until sent."""
        for buf in buffers:
            if len(buf):
                self._out.append(memoryview(buf).cast("B"))
                self._out_bytes += len(buf)

    def flush(self) -> None:
        """Write what the socket takes now."""
        while self._out:
            sent = send_some(self.sock, self._out)
            if not sent:
                return
            self._out_bytes -= sent
