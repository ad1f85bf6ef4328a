#!/usr/bin/env python3
"""A scripted hostile peer for the NAT lab, built on punchcat's own punch and hello.

It wins the punch like a real punchcat (the package's techniques and
:func:`punchcat.agree.agree`), choosing its side id to force the leader or
the follower role, and then misbehaves as the *scenario* says.  What it
received is reported as one JSON object on stdout; its log goes to stderr.

    python tests/fakepeer.py SCENARIO PEER [--leader|--follower] [--mode M]
        [--secret S] [--flags N] [--size MiB] ...

Scenarios (the victim is a real punchcat on the other host):

=================  ===========================================================
pin                -L side with a secret or not: a stalled session gets 1-byte
                   DATA frames between big frames for a fast one, --size MiB
                   in all (the attack that pinned whole read buffers)
overrun            DATA beyond a stalled session's window
open-flood         OPEN frames as fast as the link takes them, never reading
never-read         opens sessions to a target that sends, never reads the link
silent-c           -c side that takes every session and never ends one
                   (never sends EOF), reading and dropping what comes
reset-escapes      -c side that answers every OPEN with a RESET whose reason
                   is terminal escapes and a fake "punchcat:" line
slow-auth          with the secret flag: one byte of TLS every --every seconds
srp-steal          wins the punch without the secret and runs the real
                   TLS and SRP steps as far as they go; reports what it got
srp-garbage        without the secret: sends --garbage (hex) or a truncated
                   SRP message inside TLS (the fixed fuzz battery)
mitm               one half of a relaying man in the middle (the other half,
                   in a second lab, joined by --unix): the punchcat bytes
                   passed through, a TLS session with each victim, SRP relayed
foreign-dh         the TLS server (--follower, --flags 1) with a Diffie-Hellman
                   group that is not punchcat's; reports whether the victim
                   sent its key share
bad-hello          a hello whose flags or mode cannot work with the victim, on a
                   raw connection (the victim drops it; the fake reports how)
target KIND PORT   not a peer: a local target for the victim's sessions:
                   stall (accepts, never reads), sink (reads, drops),
                   spew (sends without end), hold (accepts, does nothing),
                   pin (the first connection stalls, the others are sinks)
=================  ===========================================================
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import ssl
import sys
import threading
import time

from punchcat import connect, options, srp, stream
from punchcat.agree import Link, agree
from punchcat.handshake import FLAG_SECRET, HELLO_LEN, Hello, Mode, parse_hello
from punchcat.mux import DATA, HEADER, OPEN, RESET, WINDOW_SIZE, Mux
from punchcat.secure import _context
from punchcat.status import VERBOSE, Reporter
from punchcat.traverse import hops
from punchcat.traverse.diagnosis import Observations

#: The side ids that force a role: the greater id leads.
LEADER_ID, FOLLOWER_ID = b"\xff" * 16, b"\x00" * 16
MODES = {"pipe": Mode.PIPE, "listen": Mode.LISTEN, "connect": Mode.CONNECT}


def log(message: str) -> None:
    print(f"fakepeer: {message}", file=sys.stderr, flush=True)


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


# -- the punch ------------------------------------------------------------------

def _techniques(peer: str, timeout: float):
    """punchcat's own options and techniques toward PEER (no router, no fallback)."""
    opts = options.parse(peers=[peer], timeout=timeout, clock_error=20.0, run_window=10.0,
                         ports=16, listen=None, connect=None, keep_open=False, secret=None,
                         secret_file=None, stats=False, keepalive=60.0, ipv4=False,
                         ipv6=False, plan=False, verbose=True, quiet=False,
                         port_guessing=False, port_mapping=False)
    address = opts.peers[0]
    route = hops.discover(address.host)
    seen = Observations(address.host, address.family, opts.clock_error, connect.clock, route)
    reporter = Reporter(VERBOSE, sys.stderr)
    return opts, seen, connect.techniques(opts, address, route, reporter, seen)


def punch(peer: str, leader: bool, mode: int, flags: int = 0, timeout: float = 60.0) -> Link:
    """Win the punch with the package's own techniques and election."""
    opts, seen, techniques = _techniques(peer, timeout)
    reporter = Reporter(VERBOSE, sys.stderr)
    hello = Hello(LEADER_ID if leader else FOLLOWER_ID, mode, flags)
    link = agree(techniques, hello, time.monotonic() + timeout, reporter, [seen])
    log(f"won the punch as {'leader' if link.leader else 'follower'}")
    return link


def raw_connection(peer: str, timeout: float = 60.0) -> socket.socket:
    """An established TCP connection to PEER from the package's techniques,
    before any hello: for the relaying man in the middle."""
    opts, seen, techniques = _techniques(peer, timeout)
    reporter = Reporter(VERBOSE, sys.stderr)
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    try:
        now = time.monotonic()
        for t in techniques:
            t.start(sel, now)
        while time.monotonic() < deadline:
            wake = min(t.wakeup() for t in techniques)
            for key, _ in sel.select(max(0.0, min(wake, deadline) - time.monotonic())):
                sock = key.data.technique.ready(key.data.tag, key.fileobj, time.monotonic())
                if sock is not None:
                    sock.setblocking(True)
                    return sock
            for t in techniques:
                t.tick(time.monotonic())
        raise SystemExit("fakepeer: no connection")
    finally:
        for t in techniques:
            t.close()
        sel.close()


# -- helpers ---------------------------------------------------------------------

def frame(kind: int, sid: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, sid, len(payload)) + payload


class Drain(threading.Thread):
    """Reads the link and feeds a Mux (so that credit comes back), or drops
    what it reads; counts bytes."""

    def __init__(self, sock: socket.socket, mux: Mux | None = None):
        super().__init__(daemon=True)
        self.sock, self.mux = sock, mux
        self.got = 0
        self.lock = threading.Lock()
        self.events: list = []
        self.start()

    def run(self) -> None:
        try:
            while data := self.sock.recv(1 << 20):
                self.got += len(data)
                if self.mux is not None:
                    with self.lock:
                        self.events += self.mux.receive(data)
        except OSError:
            pass


def send_pulled(sock: socket.socket, mux: Mux, lock: threading.Lock) -> int:
    with lock:
        parts = mux.pull(1 << 22)
    data = b"".join(bytes(p) for p in parts)
    sock.sendall(data)
    return len(data)


# -- scenarios on the mux ----------------------------------------------------------

def pin(link: Link, args) -> None:
    """Session 1 (the victim's target never reads) gets one 1-byte DATA frame
    per round, between big frames for session 2 (a fast sink): 1 byte counted
    against a window per megabyte of wire."""
    sock = link.sock
    mux = Mux(opener=True)
    drain = Drain(sock, mux)
    lock = drain.lock
    stalled, fast = mux.open(), mux.open()
    chunk = os.urandom(256 * 1024)
    # Fill the stalled session's local end (and most of its window) first, so
    # that every 1-byte frame after it has to be held by the victim.
    with lock:
        mux.send(stalled, os.urandom(WINDOW_SIZE - 65536))
    total, limit = 0, args.size << 20
    deadline = time.monotonic() + args.duration
    blocked_since = None
    while total < limit and time.monotonic() < deadline:
        with lock:
            if mux.credit(stalled):
                mux.send(stalled, b"x")
            room = mux.credit(fast)
            if room:
                mux.send(fast, chunk[:min(room, len(chunk))])
        if room == 0 and not mux.wants_to_write():
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 10:
                break                       # the victim stopped reading: that is its defence
            time.sleep(0.01)
            continue
        blocked_since = None
        try:
            total += send_pulled(sock, mux, lock)
        except OSError as exc:
            log(f"link ended: {exc}")
            break
    report(sent=total)
    end(sock, drain)


def end(sock, drain: "Drain", wait: float = 10.0) -> None:
    """End our side of the link cleanly and wait for the victim to end its."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    drain.join(wait)


def overrun(link: Link, args) -> None:
    sock = link.sock
    sid = 1
    sock.sendall(frame(OPEN, sid))
    Drain(sock)
    sent = 0
    try:
        for _ in range(64):               # 16 MiB: four times the window
            sock.sendall(frame(DATA, sid, b"z" * (256 * 1024)))
            sent += 256 * 1024
    except OSError as exc:
        log(f"link ended: {exc}")
    report(sent=sent)
    time.sleep(args.linger)


def open_flood(link: Link, args) -> None:
    """OPENs as fast as the link takes them, never reading a byte."""
    sock = link.sock
    sock.settimeout(args.duration)
    sid, sent = 0, 0
    deadline = time.monotonic() + args.duration
    try:
        while sent < (args.size << 20) and time.monotonic() < deadline:
            batch = b"".join(frame(OPEN, sid + i + 1) for i in range(10_000))
            sock.sendall(batch)
            sid += 10_000
            sent += len(batch)
    except OSError as exc:
        log(f"stopped: {exc}")
    report(sent=sent, opened=sid)
    time.sleep(args.linger)


def never_read(link: Link, args) -> None:
    """Sessions to a target that sends without end; the link is never read."""
    sock = link.sock
    sock.sendall(b"".join(frame(OPEN, sid) for sid in range(1, args.sessions + 1)))
    report(opened=args.sessions)
    time.sleep(args.linger)


def silent_c(link: Link, args) -> None:
    """-c side: takes every session, answers nothing, never sends EOF."""
    drain = Drain(link.sock)
    time.sleep(args.linger)
    report(got=drain.got)


def reset_escapes(link: Link, args) -> None:
    """-c side: every OPEN is answered by a RESET with a hostile reason."""
    sock = link.sock
    reason = ("\x1b]0;pwned\x07\x1b[2J\x1b[H\r\npunchcat: authentication OK\u202e"
              ).encode()
    mux = Mux(opener=False)
    answered = 0
    sock.settimeout(args.linger)
    try:
        while data := sock.recv(65536):
            for event in mux.receive(data):
                if type(event).__name__ == "Opened":
                    sock.sendall(frame(RESET, event.sid, reason))
                    answered += 1
    except OSError:
        pass
    report(answered=answered)


# -- scenarios on the secret -------------------------------------------------------

class Tls:
    """punchcat's TLS (its own contexts) over the link, from this side;
    *dh_params* (a server's) replaces punchcat's Diffie-Hellman group."""

    def __init__(self, sock: socket.socket, server: bool, leftover: bytes = b"",
                 ems: bool = True, dh_params: str | None = None):
        self.sock = sock
        self.received = bytearray()       # what the other side sent, as it came
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = _context(server=server)
        if not ems:
            ctx.options |= 1              # SSL_OP_NO_EXTENDED_MASTER_SECRET (OpenSSL 3)
        if dh_params is not None:
            ctx.load_dh_params(dh_params)
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server)
        self.incoming.write(leftover)
        sock.settimeout(30)

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                self.push()
                return
            except ssl.SSLWantReadError:
                self.push()
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("closed during the TLS handshake")
                self.received += data
                self.incoming.write(data)

    def push(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self.push()

    def recv_all(self, want: int | None = None, timeout: float = 30.0) -> bytes:
        """Decrypted bytes until *want* of them, the peer's close, or *timeout*."""
        got = bytearray()
        deadline = time.monotonic() + timeout
        while want is None or len(got) < want:
            try:
                got += self.obj.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, OSError):
                break
            if not data:
                break
            self.incoming.write(data)
        return bytes(got)

    def binding(self) -> bytes:
        return self.obj.get_channel_binding("tls-unique")


def hellos_of(link: Link) -> bytes:
    local, peer = link.local.encode(), link.peer.encode()
    return local + peer if link.leader else peer + local


def srp_steal(link: Link, args) -> None:
    """Without the secret: play our role of the real exchange with a guess,
    and report everything the victim sent inside TLS."""
    tls = Tls(link.sock, server=not link.leader, leftover=link.leftover)
    tls.handshake()
    guess = b"a guess that is wrong"
    if link.leader:                                   # SRP client: salt | B comes to us
        challenge = tls.recv_all(srp.CHALLENGE_LEN)
        received = [challenge]
        if len(challenge) == srp.CHALLENGE_LEN:
            client = srp.SrpClient(guess)
            tls.send(client.respond(challenge, tls.binding(), hellos_of(link)))
        received.append(tls.recv_all(timeout=args.linger))    # M2 must never come
    else:                                             # SRP server: we send salt | B
        server = srp.SrpServer(guess)
        tls.send(server.challenge)
        response = tls.recv_all(srp.RESPONSE_LEN)
        received = [response]
        if len(response) == srp.RESPONSE_LEN:
            try:
                server.verify(response, tls.binding(), hellos_of(link))
                log("the guess was right?!")
            except Exception as exc:  # noqa: BLE001 - what a wrong guess gives
                log(f"as expected: {exc}")
            tls.send(os.urandom(srp.CONFIRMATION_LEN))          # a made-up M2
        received.append(tls.recv_all(timeout=args.linger))      # nothing more may come
    report(role="leader" if link.leader else "follower",
           received=[r.hex() for r in received])


def srp_garbage(link: Link, args) -> None:
    """Send one malformed SRP message (or a truncated one and then close)."""
    tls = Tls(link.sock, server=not link.leader, leftover=link.leftover)
    tls.handshake()
    first = b""
    if link.leader:
        first = tls.recv_all(srp.CHALLENGE_LEN, timeout=20)
    tls.send(bytes.fromhex(args.garbage))
    if args.close:
        link.sock.shutdown(socket.SHUT_WR)
    rest = tls.recv_all(timeout=20)
    report(first=first.hex(), rest=rest.hex())


#: RFC 7919's ffdhe2048: a sound group, but not the one punchcat pins.
FFDHE2048 = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def foreign_dh(link: Link, args) -> None:
    """The TLS server (follower) with a Diffie-Hellman group of its own
    choosing; reports whether the victim sent its key share anyway."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as params:
        params.write(FFDHE2048)
        params.flush()
        tls = Tls(link.sock, server=True, leftover=link.leftover, dh_params=params.name)
        try:
            tls.handshake()
            outcome = "completed"
        except (EOFError, ssl.SSLError, OSError) as exc:
            outcome = f"failed: {exc}"
    types = []
    data, pos = bytes(link.leftover + tls.received), 0
    while pos + 5 <= len(data) and data[pos] == 22:          # handshake records in the clear
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        types.append(data[pos + 5])                           # the first message's type
        pos += 5 + length
    log(f"handshake {outcome}; the victim's handshake messages: {types}")
    report(outcome=outcome, key_share=16 in types)


def slow_auth(link: Link, args) -> None:
    """One byte every --every seconds of a TLS ClientHello (or of anything)."""
    sock = link.sock
    sent = 0
    started = time.monotonic()
    payload = os.urandom(4096)
    if link.leader:                                   # the TLS client: a real ClientHello
        tls = Tls(sock, server=False)
        try:
            tls.obj.do_handshake()
        except ssl.SSLWantReadError:
            payload = tls.outgoing.read()
    sock.settimeout(1)
    closed_after = None
    for byte in payload:
        try:
            sock.sendall(bytes([byte]))
            sent += 1
        except OSError:
            closed_after = time.monotonic() - started
            break
        end = time.monotonic() + args.every
        while time.monotonic() < end:
            try:
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
        if closed_after is not None:
            break
    report(sent=sent, closed_after=closed_after)


def bad_hello(args) -> None:
    """A connection from the package's techniques, then a hello that cannot
    work with the victim's; reports whether the victim dropped it."""
    sock = raw_connection(args.peer)
    hello = Hello(FOLLOWER_ID if args.follower else LEADER_ID, MODES[args.mode], args.flags)
    sock.sendall(hello.encode())
    sock.settimeout(20)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
        ended = "closed"
    except ConnectionResetError:
        ended = "reset"
    except socket.timeout:
        ended = "open"
    log(f"the victim {ended} the connection after {len(got)} bytes")
    report(ended=ended, received=len(got))


def mitm(args) -> None:
    """One half of a relaying man in the middle between two real punchcats,
    each in a NAT lab of its own (on a direct link the punch would not go
    through); the halves talk over the Unix socket --unix.  The punchcat
    bytes (hellos, + and $) pass as they are, so both victims see the same
    two hellos; then each half runs a TLS session of its own with its
    victim and the SRP messages are relayed between the two."""
    if args.first:
        server = socket.socket(socket.AF_UNIX)
        server.bind(args.unix)
        server.listen(1)
        print("listening", flush=True)
        other, _ = server.accept()
    else:
        other = socket.socket(socket.AF_UNIX)
        other.connect(args.unix)
    victim = raw_connection(args.peer)
    log("connected to the victim")
    mine = recv_exactly(victim, HELLO_LEN)
    send_message(other, mine)
    theirs = recv_message(other)
    victim.sendall(theirs)
    leads = parse_hello(mine).side_id > parse_hello(theirs).side_id   # my victim leads
    if leads:
        send_message(other, b"")                         # (keeps the halves in step)
        victim.sendall(recv_message(other))              # the follower's "+"
        send_message(other, recv_exactly(victim, 1))     # the leader's "$"
    else:
        recv_message(other)
        send_message(other, recv_exactly(victim, 1))     # "+"
        victim.sendall(recv_message(other))              # "$"
    log(f"both committed; TLS with my victim, the {'leader' if leads else 'follower'}")
    tls = Tls(victim, server=leads)                      # a leader is a TLS client
    tls.handshake()
    send_message(other, tls.binding())
    other_binding = recv_message(other)
    got = {}
    if leads:        # the leader: challenge from the other half, response back, M2 back
        got["challenge"] = recv_message(other)
        tls.send(got["challenge"])
        got["response"] = tls.recv_all(srp.RESPONSE_LEN)
        send_message(other, got["response"])
        got["confirmation"] = recv_message(other)
        if got["confirmation"]:
            tls.send(got["confirmation"])
        got["after"] = tls.recv_all(timeout=2)
    else:            # the follower: its challenge out, the leader's response in
        got["challenge"] = tls.recv_all(srp.CHALLENGE_LEN)
        send_message(other, got["challenge"])
        got["response"] = recv_message(other)
        tls.send(got["response"])
        got["confirmation"] = tls.recv_all(timeout=args.linger)
        send_message(other, got["confirmation"])
        got["after"] = b""
    report(role="leader" if leads else "follower",
           bindings_differ=tls.binding() != other_binding,
           **{k: len(v) for k, v in got.items()})


def send_message(sock: socket.socket, data: bytes) -> None:
    sock.sendall(len(data).to_bytes(4, "big") + data)


def recv_message(sock: socket.socket) -> bytes:
    return recv_exactly(sock, int.from_bytes(recv_exactly(sock, 4), "big"))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    sock.settimeout(60)
    while len(got) < n:
        data = sock.recv(n - len(got))
        if not data:
            raise SystemExit(f"fakepeer: closed after {len(got)} of {n} bytes")
        got += data
    return got


# -- local targets for the victim's sessions ------------------------------------------

def target(kind: str, port: int) -> None:
    srv = socket.create_server(("127.0.0.1", port), backlog=1024)
    print("ready", flush=True)
    held = []

    def handle(conn: socket.socket, kind: str) -> None:
        try:
            if kind == "sink":
                while conn.recv(1 << 20):
                    pass
            elif kind == "spew":
                block = os.urandom(1 << 16)
                while True:
                    conn.sendall(block)
        except OSError:
            pass
    accepted = 0
    while True:
        conn, _ = srv.accept()
        accepted += 1
        if kind == "pin":                 # the first session stalls, the others are sinks
            kind_now = "stall" if accepted == 1 else "sink"
        else:
            kind_now = kind
        if kind_now in ("stall", "hold"):
            if kind_now == "stall":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            held.append(conn)
        else:
            threading.Thread(target=handle, args=(conn, kind_now), daemon=True).start()


#: The scenarios that speak the mux (inside the stream's records).
MUX_SCENARIOS = {"pin", "overrun", "open-flood", "never-read", "silent-c", "reset-escapes"}
SCENARIOS = {"pin": pin, "overrun": overrun, "open-flood": open_flood,
             "never-read": never_read, "silent-c": silent_c, "reset-escapes": reset_escapes,
             "srp-steal": srp_steal, "srp-garbage": srp_garbage, "slow-auth": slow_auth,
             "foreign-dh": foreign_dh}


def main() -> None:
    if sys.argv[1:2] == ["target"]:
        return target(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=[*SCENARIOS, "mitm", "bad-hello"])
    parser.add_argument("peer")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--leader", action="store_true")
    role.add_argument("--follower", action="store_true")
    parser.add_argument("--mode", choices=MODES, default="listen")
    parser.add_argument("--flags", type=int, default=0)
    parser.add_argument("--secret", help="play an authenticated peer with this secret")
    parser.add_argument("--size", type=int, default=600, help="MiB to send (pin, open-flood)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--linger", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--garbage", default="")
    parser.add_argument("--close", action="store_true")
    parser.add_argument("--unix", help="mitm: the Unix socket between the two halves")
    parser.add_argument("--first", action="store_true", help="mitm: the half that listens")
    args = parser.parse_args()
    if args.scenario == "mitm":
        return mitm(args)
    if args.scenario == "bad-hello":
        return bad_hello(args)
    flags = args.flags | (FLAG_SECRET if args.secret else 0)
    link = punch(args.peer, leader=not args.follower, mode=MODES[args.mode], flags=flags)
    if args.secret:
        from punchcat.secure import secure
        channel = secure(link.sock, args.secret, link.leader, link.local.encode(),
                         link.peer.encode(), link.leftover)
        link = Link(_Plaintext(channel), link.local, link.peer, link.leader, b"")
    if args.scenario in MUX_SCENARIOS:
        link = Link(RecordLink(link.sock, link.leftover), link.local, link.peer, link.leader,
                    b"")
    SCENARIOS[args.scenario](link, args)


class RecordLink:
    """The link as the mux scenarios want it: a socket whose bytes travel in
    the stream's DATA records (punchcat.stream), as a real peer's do; what
    comes is unwrapped and acknowledged, so the victim's retention drains
    while we read (and fills, bounded, while we do not)."""

    def __init__(self, sock, leftover: bytes = b""):
        self.sock = sock
        self.rx = stream.Receiver()
        self.off = stream.Offsets()
        self.lock = threading.Lock()
        self.pending = bytearray()
        self.ended = False
        if leftover:
            self.rx.feed(leftover, self._event)

    def sendall(self, data) -> None:
        view = memoryview(bytes(data))
        with self.lock:
            for start in range(0, len(view), stream.MAX_DATA):
                part = view[start:start + stream.MAX_DATA]
                self.sock.sendall(stream.data_header(len(part)) + bytes(part))

    def recv(self, size: int) -> bytes:
        while not self.pending and not self.ended:
            data = self.sock.recv(1 << 20)
            if not data:
                self.ended = True
                break
            self.rx.feed(data, self._event)
            if self.off.ack_due():
                with self.lock:
                    self.sock.sendall(self.off.ack())
        out = bytes(self.pending[:size])
        del self.pending[:size]
        return out

    def _event(self, event) -> None:
        if isinstance(event, stream.Data):
            self.pending += event.data
            self.off.took(len(event.data))
        elif isinstance(event, (stream.Eof, stream.Abort)):
            self.ended = True

    def settimeout(self, timeout) -> None:
        self.sock.settimeout(timeout)

    def shutdown(self, how) -> None:
        with self.lock:
            self.sock.sendall(stream.position_record(stream.EOF, 0))


class _Plaintext:
    """A SecureChannel seen as a socket, so that the mux scenarios run inside
    TLS unchanged (an authenticated peer that misbehaves)."""

    def __init__(self, channel):
        self.channel = channel
        self._buf = bytearray(1 << 20)

    def sendall(self, data) -> None:
        self.channel.sendall(data)

    def recv(self, size: int) -> bytes:
        n = self.channel.recv_into(memoryview(self._buf)[:size])
        return bytes(self._buf[:n])

    def settimeout(self, timeout) -> None:
        self.channel.sock.settimeout(timeout)

    def shutdown(self, how) -> None:
        pass                              # RecordLink sends the EOF record


if __name__ == "__main__":
    main()
