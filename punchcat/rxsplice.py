"""The receive side's zero-copy path: a DATA payload from the link to its local socket.

On a plain link, once the multiplexer has read a DATA frame's header and
says which session the rest of the payload is for and how long it is
(:meth:`punchcat.mux.Mux.payload_pending`), those bytes need not pass
through this process: :class:`PayloadSplicer` splices them from the link
into a pipe of ours and from there into the local socket, inside the
kernel.  What the local socket does not take at once is read out of the
pipe (to the session's bounded buffer), so the pipe is empty after every
step and one pipe serves every session in turn.  A splice from the link
straight into the local socket is not possible (both are sockets); our own
pipe between them has no other reader, so nothing waits while holding it.
Measured on the mux benchmark: the ``-c`` side's CPU per GiB 2.2 -> 1.95 s.
"""

from __future__ import annotations

import os

from .channel import SPLICE_F_NONBLOCK, KernelPipe
from .errors import LinkLost

#: The pipe payloads pass through (at most this much per splice).
RX_PIPE = 1024 * 1024


class PayloadSplicer:
    """Moves payload bytes link -> our pipe -> local socket (module docstring)."""

    def __init__(self, size: int = RX_PIPE):
        self.size = size
        self._pipe: KernelPipe | None = None          # made on first use

    def pull(self, link_fd: int, want: int) -> int:
        """Up to *want* bytes from the link into the pipe: how many, 0 when the
        link has none now, -1 at its end.  Call only with the pipe empty."""
        if self._pipe is None:
            self._pipe = KernelPipe(self.size)
        try:
            n = os.splice(link_fd, self._pipe.w, min(want, self.size), flags=SPLICE_F_NONBLOCK)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise LinkLost.from_os(exc, "receiving") from None
        return n if n else -1

    def push(self, local_fd: int, n: int) -> tuple[int, bytes, OSError | None]:
        """The *n* bytes in the pipe to *local_fd*: (bytes the socket took,
        the rest read out of the pipe, the socket's error if it failed).
        The pipe is empty afterwards whatever happened."""
        moved, error = 0, None
        while moved < n:
            try:
                moved += os.splice(self._pipe.r, local_fd, n - moved, flags=SPLICE_F_NONBLOCK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                error = exc
                break
        return moved, self._drain(n - moved), error

    def _drain(self, n: int) -> bytes:
        parts = []
        while n:
            part = os.read(self._pipe.r, n)
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
