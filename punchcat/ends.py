"""The local ends of a pipe-mode stream: what is read (stdin, a target socket) and written.

Each end is used by one thread with blocking calls, because stdin and
stdout may be regular files or /dev/null: epoll (what
``selectors.DefaultSelector`` uses on Linux) refuses them, and select and
poll accept them but call them ready at all times.  Each end picks the
cheapest way the OS offers (on an unencrypted link, whose socket can be
handed to the kernel):

=========================  ====================================================
input is a regular file    ``sendfile`` to the link (no copy through us; what
                           was sent is read again from the file on a new link)
input is anything else     ``read``/``recv_into`` into the retention ring
                           (:mod:`punchcat.retention`), sent from there
output is a pipe/file/     ``splice`` from the link through a pipe of our own
socket                     (never straight into the output pipe: see
                           :meth:`Output.splice_from`)
anything else              ``recv_into`` a reused buffer, ``write``
=========================  ====================================================

None of these waits to fill a buffer: each call moves what is there, so a
line typed at a terminal is sent at once.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from typing import Callable

from .channel import HAVE_SENDFILE, HAVE_SPLICE, KernelPipe, grow_pipe
from .errors import InputFailed, LinkLost, OutputFailed

#: Most bytes asked of one read, splice or sendfile.
CHUNK = 4 * 1024 * 1024
#: Pipe size asked for (F_SETPIPE_SZ); the default is 64 KiB.
PIPE_SIZE = 1024 * 1024


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


class Input:
    """Where this side's bytes come from."""

    def __init__(self, fd: int):
        self.fd = fd
        self.kind = kind(fd)
        self.ended = False
        #: A regular file is sent by position (sendfile), read again on a new link.
        self.base = os.lseek(fd, 0, os.SEEK_CUR) if self.kind == "file" else 0
        if self.kind == "pipe":
            grow_pipe(fd, PIPE_SIZE)

    def by_position(self, plain: bool) -> bool:
        """Sent straight from the file by position (no ring) on this link."""
        return plain and self.kind == "file" and HAVE_SENDFILE

    def pollable(self) -> bool:
        return self.kind in ("pipe", "socket", "tty")

    def size(self) -> int:
        """How far a regular file reaches now, in stream positions."""
        return os.fstat(self.fd).st_size - self.base

    def wait(self, wake: int) -> bool:
        """Block until the input is readable or *wake* is (then False)."""
        if not self.pollable():
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        poller.register(wake, select.POLLIN)
        ready = {fd for fd, _ in poller.poll()}
        return self.fd in ready

    def read_into(self, view) -> int:
        """Bytes into *view* (0: the input ended)."""
        try:
            n = os.readv(self.fd, [view])
        except OSError as exc:
            raise InputFailed.from_os(exc) from None
        if n == 0:
            self.ended = True
        return n

    def sendfile(self, sock_fd: int, position: int, count: int) -> int:
        """*count* bytes of the file from stream *position* to the link."""
        try:
            n = os.sendfile(sock_fd, self.fd, self.base + position, count)
        except OSError as exc:
            if exc.errno == errno.EIO:
                raise InputFailed.from_os(exc) from None
            raise LinkLost.from_os(exc, "sending") from None
        if n == 0:
            raise InputFailed("cannot read input: the file shrank while it was sent")
        return n


class Output:
    """Where the peer's bytes go, with the half-close passed on (*at_end*)."""

    def __init__(self, fd: int, at_end: Callable[[], None] | None = None):
        self.fd = fd
        self.kind = kind(fd)
        self.at_end = at_end
        self._mid: KernelPipe | None = None
        if self.kind == "pipe":
            grow_pipe(fd, PIPE_SIZE)

    def can_splice(self, plain: bool) -> bool:
        return plain and HAVE_SPLICE and self.kind in ("pipe", "file", "socket")

    def write(self, data) -> None:
        try:
            write_all(self.fd, data)
        except OSError as exc:
            raise OutputFailed.from_os(exc) from None

    def splice_from(self, sock_fd: int, count: int) -> int:
        """Up to *count* bytes from the link to the output, through a pipe of
        our own even when the output is a pipe: a splice from a socket
        straight into the output pipe would wait for network data while
        holding that pipe's lock, and its reader would then block in read()
        although bytes are there (ssh, which waits for answers, deadlocked).
        Returns the bytes moved, all written out; 0 at the link's end."""
        if self._mid is None:
            self._mid = KernelPipe(PIPE_SIZE)
        try:
            n = os.splice(sock_fd, self._mid.w, min(count, PIPE_SIZE))
        except OSError as exc:
            raise LinkLost.from_os(exc, "receiving") from None
        left = n
        while left:
            try:
                left -= os.splice(self._mid.r, self.fd, left)
            except OSError as exc:
                raise OutputFailed.from_os(exc) from None
        return n

    def end(self) -> None:
        """The peer's direction ended: pass it on (a socket is shut down for writing)."""
        if self.at_end is not None:
            try:
                self.at_end()
            except OSError:
                pass

    def close(self) -> None:
        if self._mid is not None:
            self._mid.close()
            self._mid = None
