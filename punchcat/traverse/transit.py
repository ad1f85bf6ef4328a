"""Through a relay the user runs: the magic-wormhole transit relay, when no direct path exists.

When both NATs give every connection a random port (two phones on carrier
NAT, most mobile-to-mobile pairs) no punch can meet, and a network that lets
only a few ports out may forbid it as well.  Then, and only when the user
names one (``--relay HOST:PORT``), punchcat also goes through a relay: an
existing, packaged one, the magic-wormhole transit relay (Debian's
``magic-wormhole-transit-relay``, ``twist3 transitrelay --port=tcp:4001``).
Its protocol: connect, send ``please relay TOKEN for side SIDE\\n`` (TOKEN 64
hex digits, SIDE 16), wait for ``ok\\n``; the relay then glues together two
connections that presented the same token from different sides and passes
bytes until either closes.  It sees only bytes: the link through it is the
same TLS and SRP-6a channel as a direct one (a secret is required with
``--relay``), so the relay can read nothing and forge nothing, and a relay
that pairs us with the wrong party makes authentication fail.

The token
---------
The relay's protocol is plaintext: a token computed from the secret would
hand every observer an offline test of guesses of a short code.  So the
token is made of public facts both sides share without talking: a fixed
label, the article's bucket (one connection per active bucket, like the
candidate ports: two clocks within 2E share one), the session's tag
(``--session``) and the stream a resuming side continues.  Both addresses
would single out the pair better, but neither side knows its own public
address behind a carrier NAT (the very case the relay is for).  Anyone who
knows when we punch can present the same token: the relay may then pair us
with them; the hello or the authentication fails, that connection is
dropped, and a new one takes the token again (the session bounds how many
authentication failures it takes through relays).  The side is the first
eight bytes of this run's random side id.

The timing
----------
Direct techniques start at once; a relay joins :data:`JOIN_AFTER` seconds
after this side started (measured: a direct punch between port-preserving
NATs connects 0.24-0.47 s after the later side starts, 20 runs in 20 of
every row of the punch matrix), so a direct path usually wins and the
relay carries nothing; at once when this side can already tell that no
direct path exists (every SYN toward the peer failed here: no route).
Everything is bounded: the relay's answer (:data:`MAX_LINE` bytes, up to a
newline), the connect (:data:`CONNECT_TIMEOUT`); a relay that cannot be
reached, refuses or closes early is said once (a warning, not a failure:
direct techniques go on) and asked again after :data:`RETRY_AFTER`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import selectors
import socket
from typing import Callable

from .. import sockopts
from ..endpoints import Endpoint
from ..schedule import active_buckets
from . import Registration
from .candidates import ArticlePorts

#: Seconds after this side's start before the relay joins the race.
JOIN_AFTER = 2.0
#: Longest answer line read from the relay ("ok\n"; errors are a few words).
MAX_LINE = 64
#: A relay that has not accepted the TCP connection by then is given up (for now).
CONNECT_TIMEOUT = 10.0
#: After a failure (unreachable, refused, closed early), ask again this much later.
RETRY_AFTER = 5.0
#: After a pairing is handed over, the token is presented again this much
#: later (should that pairing be someone else, the peer waits at the relay).
AGAIN_AFTER = 1.0
#: The active buckets (which tokens to present) are looked at this often.
CHECK_INTERVAL = 1.0
#: The label in every token (with the protocol's version).
LABEL = b"punchcat transit relay token v3\0"
OK = b"ok\n"


def token(bucket: int, session: bytes, stream: bytes) -> str:
    """The relay token for *bucket*: public facts only (module docstring)."""
    digest = hashlib.sha256(LABEL + session + stream + str(bucket).encode()).hexdigest()
    return digest                                     # 64 hex digits


def request(token_hex: str, side: bytes) -> bytes:
    """The line that asks the relay to pair us."""
    return f"please relay {token_hex} for side {side[:8].hex()}\n".encode("ascii")


def parse_answer(peeked: bytes) -> tuple[int, bytes] | None:
    """The relay's answer at the start of *peeked*: (its length, the line
    without the newline), or None while no newline has come (within
    :data:`MAX_LINE`).  Raises ValueError for a line longer than that."""
    end = peeked.find(b"\n", 0, MAX_LINE)
    if end < 0:
        if len(peeked) >= MAX_LINE:
            raise ValueError(f"an answer longer than {MAX_LINE} bytes")
        return None
    return end + 1, peeked[:end]


class _Attempt:
    """One connection to the relay for one bucket."""

    __slots__ = ("sock", "bucket", "since", "asked")

    def __init__(self, sock: socket.socket, bucket: int, since: float):
        self.sock, self.bucket, self.since, self.asked = sock, bucket, since, False


class TransitRelay:
    """A technique: connections through one transit relay (module docstring)."""

    def __init__(self, relay: Endpoint, candidates: ArticlePorts, side_id: bytes,
                 reporter, stream: bytes = bytes(8), join_after: float = JOIN_AFTER,
                 hopeless: Callable[[], bool] = lambda: False):
        self.relay = relay
        self.via = str(relay)                # how the link goes, for the user
        self.candidates = candidates
        self.side = side_id
        self.stream = stream
        self.reporter = reporter
        self.join_after = join_after
        self.hopeless = hopeless             # no direct path: join at once
        self.attempts: dict[int, _Attempt] = {}       # bucket -> its connection
        self.retry_at: dict[int, float] = {}          # bucket -> when to ask again
        self.join_at = 0.0
        self.joined = False
        self.next_check = 0.0                # the clock's buckets are looked at again then
        self.warned: set[str] = set()
        self.paired = 0                      # connections the relay paired (handed over)
        self.sel: selectors.BaseSelector | None = None

    # -- the Technique interface --------------------------------------------
    def start(self, sel: selectors.BaseSelector, now: float) -> None:
        self.sel = sel
        self.join_at = now + self.join_after
        self.tick(now)

    def wakeup(self) -> float:
        if not self.joined:
            return min(self.join_at, self.next_check)
        times = [self.next_check, *self.retry_at.values()]
        times += [a.since + CONNECT_TIMEOUT for a in self.attempts.values() if not a.asked]
        return min(times)

    def tick(self, now: float) -> None:
        if now >= self.next_check:
            self.next_check = now + CHECK_INTERVAL
        if not self.joined:
            if now < self.join_at and not self.hopeless():
                return
            self.joined = True                # (no direct path: at once)
        buckets = active_buckets(self.candidates.clock(), self.candidates.clock_error,
                                 self.candidates.run_window)
        for bucket in [b for b in self.attempts if b not in buckets]:
            self._drop(bucket)                # the clock rolled it away
        for bucket in [b for b in self.retry_at if b not in buckets]:
            del self.retry_at[bucket]
        for bucket in buckets:
            attempt = self.attempts.get(bucket)
            if attempt is not None and not attempt.asked and now >= attempt.since + CONNECT_TIMEOUT:
                self._failed(bucket, f"it did not accept a connection within "
                                     f"{CONNECT_TIMEOUT:g} s", now)
            elif attempt is None and now >= self.retry_at.get(bucket, 0.0):
                self.retry_at.pop(bucket, None)
                self._connect(bucket, now)

    def ready(self, bucket: int, sock: socket.socket, now: float) -> socket.socket | None:
        attempt = self.attempts.get(bucket)
        if attempt is None or attempt.sock is not sock:
            return None
        if not attempt.asked:
            err = sockopts.connect_result(sock)
            if err is None:
                return None
            if err:
                self._failed(bucket, errno.errorcode.get(err, str(err)) + ": "
                             + _strerror(err), now)
                return None
            try:
                sock.sendall(request(token(bucket, self.candidates.session, self.stream),
                                     self.side))
            except OSError as exc:
                self._failed(bucket, exc.strerror or str(exc), now)
                return None
            attempt.asked = True
            self.sel.modify(sock, selectors.EVENT_READ, Registration(self, bucket))
            return None
        try:
            peeked = sock.recv(MAX_LINE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._failed(bucket, f"the connection failed: {exc.strerror or exc}", now)
            return None
        if not peeked:
            self._failed(bucket, "it closed the connection without pairing us", now)
            return None
        try:
            answer = parse_answer(peeked)
        except ValueError as exc:
            self._failed(bucket, f"it answered {exc}", now)
            return None
        if answer is None:
            return None
        length, line = answer
        sock.recv(length)                     # the answer only: the peer's hello follows
        if line + b"\n" != OK:
            text = line.decode("ascii", "backslashreplace")
            self._failed(bucket, f"it answered {text!r}", now)
            return None
        del self.attempts[bucket]
        self.sel.unregister(sock)
        self.paired += 1
        self.retry_at[bucket] = now + AGAIN_AFTER     # another, should this one be dropped
        self.reporter.info(f"the relay {self.via} paired a connection (bucket {bucket})")
        return sock

    def pause(self, now: float) -> None:
        pass                                  # nothing here disturbs a router

    def status(self) -> str:
        return f"relay {self.via}" if self.joined else f"relay {self.via} (soon)"

    def finish(self, leader: bool) -> None:
        self.close()
        return None                           # the relay forgets what we close

    def close(self) -> None:
        for bucket in list(self.attempts):
            self._drop(bucket)

    # -- internals ----------------------------------------------------------
    def _connect(self, bucket: int, now: float) -> None:
        try:
            sock = socket.socket(self.relay.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex((self.relay.host, self.relay.port))
        except OSError as exc:
            self._warn(f"cannot reach the relay {self.via}: {exc.strerror or exc}")
            self.retry_at[bucket] = now + RETRY_AFTER
            return
        if err not in sockopts.CONNECTING:
            sock.close()
            self._warn(f"cannot reach the relay {self.via}: {_strerror(err)}")
            self.retry_at[bucket] = now + RETRY_AFTER
            return
        self.attempts[bucket] = _Attempt(sock, bucket, now)
        self.sel.register(sock, selectors.EVENT_WRITE, Registration(self, bucket))

    def _failed(self, bucket: int, why: str, now: float) -> None:
        self._drop(bucket)
        self._warn(f"the relay {self.via}: {why}; direct techniques go on")
        self.retry_at[bucket] = now + RETRY_AFTER

    def _drop(self, bucket: int) -> None:
        attempt = self.attempts.pop(bucket, None)
        if attempt is not None:
            self.sel.unregister(attempt.sock)
            attempt.sock.close()

    def _warn(self, text: str) -> None:
        """Said once (later repeats with -v): the relay is a help, not the run."""
        if text in self.warned:
            self.reporter.info(text)
        else:
            self.warned.add(text)
            self.reporter.warning(text)


def _strerror(err: int) -> str:
    return os.strerror(err)
