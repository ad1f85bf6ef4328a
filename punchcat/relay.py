"""The pipe: stdin to the peer and the peer to stdout, until both are done.

Four directions, as in nc: stdin is read and sent to the net, the net is read
and written to stdout.  Each of the two flows runs in its own thread with
blocking I/O, because stdin and stdout may be regular files or /dev/null,
which ``select``/epoll refuse.  The half-close rules:

* stdin ends: shut down our write side (the peer sees EOF), keep receiving;
* the peer ends its side: everything has been written to stdout, that flow
  is done; keep sending stdin;
* both done: close the connection, status 0;
* a flow fails (connection reset, stdout closed): stop everything, status 1.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

from .errors import LinkLost, PunchcatError

BUFSIZE = 256 * 1024


@dataclass
class Stats:
    sent: int = 0
    received: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _up(sock: socket.socket, fd: int, stats: Stats) -> None:
    """stdin -> net, then half-close."""
    while True:
        try:
            data = os.read(fd, BUFSIZE)
        except OSError as exc:
            raise PunchcatError(f"cannot read stdin: {exc.strerror}") from None
        if not data:
            break
        try:
            sock.sendall(data)
        except OSError as exc:
            raise LinkLost(f"connection lost while sending: {exc.strerror}") from None
        stats.sent += len(data)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        raise LinkLost(f"connection lost at the end of input: {exc.strerror}") from None


def _down(sock: socket.socket, fd: int, leftover: bytes, stats: Stats) -> None:
    """net -> stdout, until the peer's EOF."""
    buf = bytearray(BUFSIZE)
    view = memoryview(buf)
    pending = leftover
    while True:
        if pending:
            try:
                write_all(fd, pending)
            except OSError as exc:
                raise PunchcatError(f"cannot write stdout: {exc.strerror}") from None
            stats.received += len(pending)
        try:
            n = sock.recv_into(buf)
        except OSError as exc:
            raise LinkLost(f"connection lost while receiving: {exc.strerror}") from None
        if n == 0:
            return
        pending = view[:n]


def pipe(sock: socket.socket, stdin_fd: int, stdout_fd: int, leftover: bytes = b"",
         stats: Stats | None = None) -> Stats:
    """Relay until both directions are done; raises on the first failure."""
    stats = stats or Stats()
    results: queue.Queue = queue.Queue()

    def run(flow, *args) -> None:
        try:
            flow(*args)
            results.put(None)
        except PunchcatError as exc:
            results.put(exc)

    threads = [threading.Thread(target=run, args=(_up, sock, stdin_fd, stats), daemon=True),
               threading.Thread(target=run, args=(_down, sock, stdout_fd, leftover, stats),
                                daemon=True)]
    for t in threads:
        t.start()
    try:
        for _ in threads:
            while True:
                try:
                    exc = results.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue
            if exc is not None:
                raise exc
    finally:
        stats.ended = time.monotonic()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    return stats
