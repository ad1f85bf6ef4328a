"""One session at a time toward one peer, per user and host: sessions never cross.

Two punchcats of one user toward the same peer, on the same host, punch on
the same candidate ports (``SO_REUSEPORT`` lets them share each port) and
the kernel hands either's connection to either: measured, two files sent
from two terminals a second apart landed in each other's output three times
in seven, every process exiting 0.  So a run holds a lock for its peer, and
a second run toward the same peer waits for the first to end, saying so;
two sessions given different ``--session`` names (both sides the same name)
have ports and hellos of their own and run side by side.

The lock is an ``flock`` on a file in a directory only this user can use
(``$XDG_RUNTIME_DIR/punchcat``, else ``/tmp/punchcat-UID``), named by a
hash of the peer's addresses, the session name and this host's network
namespace (the NAT lab runs many "hosts" on one file system).  The kernel
drops it when the process ends, however it ends.  Another user cannot
share our ports (``SO_REUSEPORT`` wants the same user), so needs no lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat

from .errors import check_interrupted


def lock_dir() -> str | None:
    """This user's directory for locks, made if needed; None when the only
    candidate is not safely ours (another user made it, others may write)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "punchcat") if runtime else f"/tmp/punchcat-{os.geteuid()}"
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(base)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    return base


def _namespace() -> str:
    """This host's network namespace (its inode), where Linux says."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return ""


class PeerLock:
    """Held while a run talks to *peers* in *session*; use as a context manager."""

    def __init__(self, peers: list[str], session: str, reporter):
        key = "\0".join([_namespace(), session, *sorted(peers)])
        self.name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.peers = peers
        self.session = session
        self.reporter = reporter
        self.fd: int | None = None

    def __enter__(self) -> "PeerLock":
        base = lock_dir()
        if base is None:
            self.reporter.warning("no private directory for the session lock (another user "
                                  "owns /tmp/punchcat-UID?): two runs toward the same peer "
                                  "would not be kept apart")
            return self
        try:
            self.fd = os.open(os.path.join(base, self.name + ".lock"),
                              os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            self.reporter.warning(f"cannot open the session lock: {exc.strerror}")
            return self
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.reporter.warning(
                f"another punchcat toward {' '.join(self.peers)}"
                + (f" in session {self.session!r}" if self.session else "")
                + f" runs on this host{self._holder()}: waiting for it to end (to run two at "
                  f"once, give both sides of each the same --session NAME)")
            check_interrupted()
            fcntl.flock(self.fd, fcntl.LOCK_EX)          # a signal interrupts it
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _holder(self) -> str:
        try:
            pid = os.pread(self.fd, 16, 0).decode().strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)            # releases the lock
            self.fd = None
