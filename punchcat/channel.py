"""The agreed connection as a byte stream: what the relay and the mux use.

A channel offers two ways to move bytes:

* blocking calls for the pipe's two threads (:meth:`recv_into`,
  :meth:`sendall`, :meth:`shutdown_write`); and
* non-blocking calls for the multiplexer's event loop (:meth:`read`,
  :meth:`queue`, :meth:`flush`, :meth:`backlog`).

:class:`PlainChannel` is the TCP connection itself (its file descriptor
also serves the zero-copy paths of :mod:`punchcat.relay`);
an encrypted channel lives in :mod:`punchcat.secure`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

from .errors import LinkLost

#: Most buffers handed to one sendmsg() call.
IOV_MAX = 64
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)


def grow_pipe(fd: int, size: int) -> None:
    """Ask for a pipe of *size* bytes (the default is 64 KiB); keep the
    default if the OS refuses (not a pipe, over /proc/sys/fs/pipe-max-size)."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:
        pass


class Pipe:
    """A pipe of our own, to move a session's bytes to the link inside the
    kernel (splice) instead of through our memory.

    *filled* counts the bytes in it; *owed* those that queued frames still
    have to send.  :meth:`release` closes it once nothing is owed.
    """

    def __init__(self, size: int = 512 * 1024):
        self.r, self.w = os.pipe()
        grow_pipe(self.w, size)
        self.cap = fcntl.fcntl(self.w, F_GETPIPE_SZ)
        self.filled = 0
        self.owed = 0
        self.closing = False

    def room(self) -> int:
        return self.cap - self.filled

    def release(self) -> None:
        self.closing = True
        if self.owed == 0 and self.r >= 0:
            os.close(self.r)
            os.close(self.w)
            self.r = self.w = -1


class Spliced:
    """A frame payload still in a :class:`Pipe`: *n* bytes to splice to the link."""

    __slots__ = ("pipe", "n")

    def __init__(self, pipe: Pipe, n: int):
        self.pipe, self.n = pipe, n

    def __len__(self) -> int:
        return self.n


def lost(exc: OSError, doing: str) -> LinkLost:
    if exc.errno == errno.ETIMEDOUT:
        return LinkLost(f"connection lost while {doing}: the peer stopped answering "
                        f"(it or the path to it is gone)")
    return LinkLost(f"connection lost while {doing}: {exc.strerror or exc}")


def keep_alive(sock: socket.socket, seconds: float) -> None:
    """Notice a vanished peer within about *seconds*, idle or sending.

    Idle: TCP keepalive probes start after half the bound and three unanswered
    probes, a sixth of the bound apart, end the connection.  Sending:
    TCP_USER_TIMEOUT ends it when data stays unacknowledged for the bound.
    The probes also keep NAT mappings along the path from expiring.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = (("TCP_KEEPIDLE", max(1, round(seconds / 2))),
               ("TCP_KEEPINTVL", max(1, round(seconds / 6))),
               ("TCP_KEEPCNT", 3),
               ("TCP_USER_TIMEOUT", int(seconds * 1000)))
    for name, value in options:
        if hasattr(socket, name):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            except OSError:
                pass              # an OS that lacks one still gets the others


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
        raise lost(exc, "sending") from None
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
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Interactive use first: a keystroke must not wait for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._out: list = []          # what the event loop queued, not yet written
        self._out_bytes = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def backlog(self) -> int:
        return self._out_bytes

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class PlainChannel(Channel):
    """The punched TCP connection, unencrypted."""

    # -- blocking (relay threads) -------------------------------------------
    def recv_into(self, buf) -> int:
        try:
            return self.sock.recv_into(buf)
        except OSError as exc:
            raise lost(exc, "receiving") from None

    def sendall(self, data) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise lost(exc, "sending") from None

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise lost(exc, "closing") from None

    # -- non-blocking (mux event loop) ----------------------------------------
    def read(self, size: int = 1 << 20) -> bytes | None:
        """Bytes available now; b"" at end of stream; None if none yet."""
        try:
            return self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise lost(exc, "receiving") from None

    def queue(self, buffers) -> None:
        """Buffers (bytes-like) and :class:`Spliced` payloads, in order."""
        for buf in buffers:
            if isinstance(buf, Spliced):
                buf.pipe.owed += buf.n
                self._out.append(buf)
                self._out_bytes += buf.n
            elif len(buf):
                self._out.append(memoryview(buf).cast("B"))
                self._out_bytes += len(buf)

    def flush(self) -> None:
        """Write what the socket takes now."""
        while self._out:
            head = self._out[0]
            if isinstance(head, Spliced):
                if not self._splice_out(head):
                    return
                continue
            # Buffers up to the next spliced payload (a frame header, mostly).
            end = next((i for i, item in enumerate(self._out) if isinstance(item, Spliced)),
                       len(self._out))
            batch = self._out[:end]
            sent = send_some(self.sock, batch)
            if not sent:
                return
            self._out[:end] = batch
            self._out_bytes -= sent

    def _splice_out(self, item: Spliced) -> bool:
        """Move a payload from its pipe to the socket; False if the socket is full."""
        try:
            moved = os.splice(item.pipe.r, self.sock.fileno(), item.n, flags=SPLICE_F_NONBLOCK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise lost(exc, "sending") from None
        item.n -= moved
        item.pipe.filled -= moved
        item.pipe.owed -= moved
        self._out_bytes -= moved
        if item.n == 0:
            self._out.pop(0)
            if item.pipe.closing:
                item.pipe.release()
        return True
