"""Hello and winner: both sides settle on the same verified connection.

Theory of operation
-------------------
The punch can complete several TCP connections between the two hosts, one
per candidate port, and each side learns of them in its own order.  Both
must end up using exactly one, the same one, and only after checking that
the other end is a punchcat and not some server that happens to listen on
a candidate port.

Each run picks a random 16-byte *side id*.  As soon as a connection is
established, each side sends its hello on it::

    "PUNCHCAT" | version (1) | mode (1) | flags (1) | side id (16) | session (8) | stream (8)

*session* names the session (``--session``; eight zero bytes without a
name, else a hash of it), so that two sessions between the same two hosts
never take each other's connections; *stream* names the stream a resuming
side continues (zero on a fresh link).

A connection is *verified* when the peer's hello has arrived on it with the
right magic and version and a side id that is not our own (an equal id is
a connection to ourselves).  Anything else is dropped without a byte of
user data having been sent on it.  A punchcat that cannot work with this
one (another protocol version, a mode that does not pair with ours, a secret
on one side only, another session or stream) is dropped too, not fatal: a
stray connection from the peer's address (anyone who shares its public
address) must not end the run before the real peer arrives.  Its reason is
said at once and again in the failure line if no connection wins.

The article chooses as leader the side with the greater WAN IP address, but
a host behind NAT does not know its WAN address and two hosts behind one
NAT share it.  Here the leader is the side with the greater side id: both
sides see the same two ids, so both agree without knowing any address.

The follower answers the leader's hello with the byte ``+``, which proves
that the connection carries data both ways (measured in the lab: after
earlier sessions between the same hosts, a router's connection tracking can
pass one direction of a fresh connection and not the other).  The leader
commits to the first connection on which that ``+`` arrives by sending the
single byte ``$`` on it (the article's confirmation) and closes the others
(with a reset rather than the article's clean close: the side that closes
cleanly first keeps each loser in TIME_WAIT for a minute, and a new session
between the same hosts could not use those ports).
The follower sends nothing after ``+`` until ``$`` arrives; the connection
on which it arrives is the winner, and the follower closes the others.
User data follows ``$`` immediately in both directions, so agreeing costs
half a round trip beyond the hellos.

This module is sans-IO: :class:`Election` is fed the bytes received on each
connection and answers with events (:class:`Send`, :class:`Drop`,
:class:`Won`) for the caller to carry out.  :func:`punchcat.agree.agree` is
the thin I/O layer that runs it over the connections the punch produces.
"""

from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass
from typing import Hashable

from .errors import LocalProtocolError, RemoteProtocolError

MAGIC = b"PUNCHCAT"
#: 3: the hello names the session and the stream, the link carries records
#: (punchcat.stream) and survives a broken path; 2: the secret is proven by
#: SRP-6a (punchcat.srp) and codes are compared by their digits; version 1
#: had scrypt-keyed proofs.
VERSION = 3
COMMIT = b"$"
ACK = b"+"
ID_LEN = 16
TAG_LEN = 8
HELLO_LEN = len(MAGIC) + 3 + ID_LEN + 2 * TAG_LEN
#: The session and stream fields when there is none.
NO_TAG = bytes(TAG_LEN)


class Mode(enum.IntEnum):
    """What a side does with the link; it travels in the hello."""

    PIPE = 0      # stdin/stdout (also ssh's ProxyCommand)
    LISTEN = 1    # -L: carries local clients to the peer, many sessions
    CONNECT = 2   # -c: connects the peer's sessions to its target

    @property
    def label(self) -> str:
        return {Mode.PIPE: "pipe mode", Mode.LISTEN: "-L mode", Mode.CONNECT: "-c mode"}[self]


#: Hello flag: this side requires the shared secret (punchcat.secure).
FLAG_SECRET = 1
#: Hello flag: this side punches again when the link breaks (--resume-timeout
#: above 0); the stream is resumed only when both sides do.
FLAG_RESUME = 2
#: Hello flag, with a stream: this side (a ``-k`` server) resumes that stream
#: but takes a peer that starts afresh instead (the peer's old process is gone).
FLAG_FRESH_OK = 4

#: Pairs of modes that work together: plain pipes, a -L side with a -c side
#: (multiplexed sessions), and a pipe with a -c side (one raw session).
COMPATIBLE = {(Mode.PIPE, Mode.PIPE), (Mode.LISTEN, Mode.CONNECT), (Mode.CONNECT, Mode.LISTEN),
              (Mode.PIPE, Mode.CONNECT), (Mode.CONNECT, Mode.PIPE)}


class NotPunchcat(Exception):
    """The other end of a connection is not a punchcat (wrong magic)."""


def session_tag(name: str) -> bytes:
    """The hello's session field for ``--session NAME`` (none: zeros)."""
    if not name:
        return NO_TAG
    return hashlib.sha256(b"punchcat session\0" + name.encode("utf-8", "surrogateescape")
                          ).digest()[:TAG_LEN]


@dataclass(frozen=True)
class Hello:
    side_id: bytes
    mode: int = Mode.PIPE
    flags: int = 0
    version: int = VERSION
    session: bytes = NO_TAG
    stream: bytes = NO_TAG

    @classmethod
    def fresh(cls, mode: int = Mode.PIPE, flags: int = 0, session: bytes = NO_TAG,
              stream: bytes = NO_TAG) -> "Hello":
        return cls(os.urandom(ID_LEN), mode, flags, VERSION, session, stream)

    def encode(self) -> bytes:
        if len(self.side_id) != ID_LEN or len(self.session) != TAG_LEN or \
                len(self.stream) != TAG_LEN:
            raise ValueError("side id must be 16 bytes, session and stream 8")
        return (MAGIC + bytes((self.version, self.mode, self.flags)) + self.side_id
                + self.session + self.stream)


def parse_hello(buf: bytes) -> Hello | None:
    """Parse a hello at the start of *buf*; None while more bytes are needed.

    Raises :class:`NotPunchcat` as soon as a byte differs from the magic, and
    :class:`RemoteProtocolError` for another version or an unknown mode.
    """
    head = bytes(buf[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        raise NotPunchcat(f"not a punchcat (first bytes {head[:8]!r})")
    if len(buf) <= len(MAGIC):
        return None
    version = buf[len(MAGIC)]
    if version != VERSION:
        age = "an older" if version < VERSION else "a newer"
        raise RemoteProtocolError(
            f"peer speaks punchcat protocol version {version} ({age} punchcat), this "
            f"punchcat speaks version {VERSION}; run the same punchcat release on both sides")
    if len(buf) < HELLO_LEN:
        return None
    mode, flags = buf[len(MAGIC) + 1], buf[len(MAGIC) + 2]
    if mode not in Mode._value2member_map_:
        raise RemoteProtocolError(f"peer announced an unknown mode {mode}")
    at = len(MAGIC) + 3
    return Hello(bytes(buf[at:at + ID_LEN]), mode, flags, version,
                 bytes(buf[at + ID_LEN:at + ID_LEN + TAG_LEN]),
                 bytes(buf[at + ID_LEN + TAG_LEN:HELLO_LEN]))


def check_compatible(local: Hello, peer: Hello, fresh_ok: bool = False) -> None:
    """Raise :class:`RemoteProtocolError` if the two sides cannot work
    together.  *fresh_ok*: this side, resuming a stream, also takes a peer
    that starts afresh (a ``-k`` server: the peer's old process is gone)."""
    if (local.flags ^ peer.flags) & FLAG_SECRET:
        mine = "uses a secret" if local.flags & FLAG_SECRET else "has no secret"
        theirs = "the peer does not" if local.flags & FLAG_SECRET else "the peer uses one"
        raise RemoteProtocolError(f"this side {mine}, {theirs}: give both the same "
                                  f"secret (-s, --secret-file or PUNCHCAT_SECRET) or neither")
    pair = (Mode(local.mode), Mode(peer.mode))
    if pair not in COMPATIBLE:
        hint = {Mode.PIPE: "-c", Mode.LISTEN: "-c", Mode.CONNECT: "-L or no mode option"}
        raise RemoteProtocolError(
            f"this side is in {pair[0].label}, the peer in {pair[1].label}; these cannot work "
            f"together (run the peer with {hint[pair[0]]})")
    if local.session != peer.session:
        raise RemoteProtocolError("the peer runs another session (give both sides the same "
                                  "--session NAME, or none)")
    fresh = ((fresh_ok and peer.stream == NO_TAG)
             or (local.stream == NO_TAG and peer.flags & FLAG_FRESH_OK))
    if local.stream != peer.stream and not fresh:
        raise RemoteProtocolError(
            "the peer is resuming a stream this side does not know" if peer.stream != NO_TAG
            else "the peer started afresh, this side is resuming its stream")


# Events the election asks the caller to carry out.
@dataclass(frozen=True)
class Send:
    conn: Hashable
    data: bytes


@dataclass(frozen=True)
class Drop:
    conn: Hashable
    reason: str
    #: A punchcat that cannot work with this one (version, mode, secret,
    #: session, stream), rather than something that is not a punchcat.
    incompatible: bool = False


@dataclass(frozen=True)
class Won:
    conn: Hashable
    peer: Hello
    leftover: bytes  # user data that arrived with the commit


class Phase(enum.Enum):
    """Where one connection stands in the election (see the table below)."""

    HELLO = "awaiting the peer's hello"
    ACK = "awaiting the follower's ACK"        # the leader's side of a greeted connection
    COMMIT = "awaiting the leader's COMMIT"    # the follower's, once it sent ACK
    WON = "won"


#: What each phase expects next, and where it leads (h11 keeps its states in
#: a table too).  Anything else arriving in a phase drops the connection.
#:
#: =======  ==========================  ===========================================
#: phase    expects                     then
#: =======  ==========================  ===========================================
#: HELLO    the peer's hello            leader: ACK; follower: sends ACK, COMMIT
#: ACK      ``+``                       commits (sends ``$``) if nothing has won
#:                                      yet, WON; else kept, verified, in ACK
#: COMMIT   ``$`` and user data         WON (the data after ``$`` is the leftover)
#: WON      user data, not ours         the caller's from now on
#: =======  ==========================  ===========================================
TRANSITIONS = {Phase.HELLO: (Phase.ACK, Phase.COMMIT), Phase.ACK: (Phase.WON,),
               Phase.COMMIT: (Phase.WON,), Phase.WON: ()}


class _Conn:
    """One candidate connection: its phase, what arrived, and the peer's hello."""

    __slots__ = ("phase", "buf", "peer")

    def __init__(self) -> None:
        self.phase = Phase.HELLO
        self.buf = bytearray()
        self.peer: Hello | None = None

    def advance(self, phase: Phase) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise LocalProtocolError(f"election: {self.phase.name} cannot lead to {phase.name}")
        self.phase = phase


class Election:
    """Chooses the one connection both sides use (see the module docstring).

    Feed it :meth:`opened`, :meth:`received` and :meth:`closed`; each returns
    the events to carry out, in order.  A :class:`Won` names the winner once
    its commit is sent (leader) or received (follower); should the leader's
    ``$`` fail to go out, the caller reports the connection closed and the
    election resumes with the others, which may emit another :class:`Won`.
    """

    def __init__(self, local: Hello, fresh_ok: bool = False):
        self.local = local
        self.fresh_ok = fresh_ok           # see check_compatible
        self._conns: dict[Hashable, _Conn] = {}

    def leads(self, peer: Hello) -> bool:
        return self.local.side_id > peer.side_id

    def wanted(self, conn: Hashable) -> int:
        """How many bytes *conn* may give now without reading past what the
        election needs: the rest of the hello, then the one byte of ``+`` or
        ``$``.  What follows the commit is the channel's (a TLS library
        reads it from the socket itself), so the I/O layer reads no further."""
        state = self._conns.get(conn)
        if state is None or state.phase is Phase.WON:
            return 0
        if state.phase is Phase.HELLO:
            return max(1, HELLO_LEN - len(state.buf))
        return 1

    def phase(self, conn: Hashable) -> Phase | None:
        """Where *conn* stands (None once it is closed or dropped)."""
        state = self._conns.get(conn)
        return state.phase if state is not None else None

    def _decided(self) -> bool:
        return any(c.phase is Phase.WON for c in self._conns.values())

    def opened(self, conn: Hashable) -> list:
        """A connection was established: greet the other end."""
        self._conns[conn] = _Conn()
        return [Send(conn, self.local.encode())]

    def closed(self, conn: Hashable) -> list:
        """A connection closed or failed.  If the leader had committed to it
        (the ``$`` could not be sent), the election resumes with the others."""
        state = self._conns.pop(conn, None)
        if state is None or state.phase is not Phase.WON:
            return []
        events: list = []
        for other in list(self._conns):
            if not self._decided():
                events += self.received(other, b"")
        return events

    def _drop(self, conn: Hashable, reason: str, incompatible: bool = False) -> list:
        self._conns.pop(conn, None)
        return [Drop(conn, reason, incompatible)]

    def received(self, conn: Hashable, data: bytes) -> list:
        """Bytes arrived on *conn*; returns the events they cause."""
        state = self._conns.get(conn)
        if state is None:
            return []
        state.buf += data
        if self._decided():
            return []          # decided; the others are kept in case the winner fails
        events: list = []
        if state.phase is Phase.HELLO:
            try:
                peer = parse_hello(state.buf)
                if peer is not None and peer.side_id != self.local.side_id:
                    check_compatible(self.local, peer, self.fresh_ok)
            except NotPunchcat as exc:
                return self._drop(conn, str(exc))
            except RemoteProtocolError as exc:
                return self._drop(conn, str(exc), incompatible=True)
            if peer is None:
                return []
            if peer.side_id == self.local.side_id:
                return self._drop(conn, "connected to itself")
            state.peer = peer
            del state.buf[:HELLO_LEN]
            if self.leads(peer):
                state.advance(Phase.ACK)
            else:
                state.advance(Phase.COMMIT)
                events.append(Send(conn, ACK))     # the leader's hello came through
        if not state.buf:
            return events
        if state.phase is Phase.ACK:
            # Commit only where the follower's ACK proves our hello got there:
            # both directions of this connection work.
            if bytes(state.buf) != ACK:
                return self._drop(conn, "peer sent data before the commit")
            state.advance(Phase.WON)
            return events + [Send(conn, COMMIT), Won(conn, state.peer, b"")]
        if state.buf[:1] != COMMIT:
            return self._drop(conn, "peer sent data before the commit")   # no ACK then
        state.advance(Phase.WON)
        return events + [Won(conn, state.peer, bytes(state.buf[1:]))]
