"""The forwarding loop's bounds without a network: a peer on a socketpair,
local ends on loopback (held bytes, half-closed sessions, accept errors).
The peer's mux frames travel in the stream's DATA records, as a real
peer's do."""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from punchcat import stream
from punchcat.channel import PlainChannel
from punchcat.errors import Interrupted
from punchcat.forward import RECEIVE_BUDGET, Forwarder
from punchcat.mux import DATA, HEADER, OPEN, WINDOW_SIZE, Data, Mux, Reset
from punchcat.status import NORMAL, Reporter, printable

from conftest import wait_for


def frame(kind, sid, payload=b""):
    """A mux frame in a DATA record of its own."""
    raw = HEADER.pack(kind, sid, len(payload)) + payload
    return stream.data_header(len(raw)) + raw


def records(data: bytes) -> bytes:
    return stream.data_header(len(data)) + data


def unwrap(sock, mux: Mux, until, rx=None) -> list:
    """The mux events from the forwarder's records on *sock*, until *until(events)*."""
    rx = rx or stream.Receiver()
    events: list = []
    while not until(events):
        data = sock.recv(65536)
        assert data, "the forwarder closed the link"
        rx.feed(data, lambda e: events.extend(mux.receive(e.data))
                if isinstance(e, stream.Data) else None)
    return events


class Lines:
    """A stderr stand-in that keeps the lines written to it."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return False


def run_forwarder(forwarder: Forwarder, link):
    box = {}

    def run():
        try:
            forwarder.run_link(PlainChannel(link))
        except BaseException as exc:         # noqa: BLE001 - reported to the test
            box["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def stop(thread, box):
    Interrupted.pending = Interrupted(2, "SIGINT")
    thread.join(10)
    Interrupted.pending = None
    assert not thread.is_alive()
    assert isinstance(box.get("error"), Interrupted), box


def test_printable_escapes_what_could_drive_a_terminal():
    hostile = "ok\x1b]0;title\x07\x1b[2J\r\npunchcat: fake\u202e\x7f\x9b\udcff"
    shown = printable(hostile)
    assert shown.isprintable()
    assert shown == (r"ok\x1b]0;title\x07\x1b[2J\x0d\x0apunchcat: fake\u202e\x7f\x9b"
                     r"\udcff")
    assert printable(shown) == shown
    assert printable("plain text, déjà vu") == "plain text, déjà vu"


def test_a_stalled_session_holds_its_window_and_no_more(tmp_path):
    """A -c side whose target never reads: what the peer sends for it is
    held (copied, not pinned), bounded by the window; more is an error."""
    target = socket.create_server(("127.0.0.1", 0))
    link, peer = socket.socketpair()
    forwarder = Forwarder(opener=False, reporter=Reporter(NORMAL, Lines()),
                          target=_endpoint(target))
    thread, box = run_forwarder(forwarder, link)
    conn = None
    try:
        peer.sendall(frame(OPEN, 1))
        conn, _ = target.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_for(lambda: 1 in forwarder.locals, what="the session")
        # Small kernel buffers on the victim's side too, so that the window
        # ends up in its memory rather than in the kernel's.
        forwarder.locals[1].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        chunk = frame(DATA, 1, b"x" * 65536)
        for _ in range(WINDOW_SIZE // 65536):
            peer.sendall(chunk)
        wait_for(lambda: forwarder.held > WINDOW_SIZE // 2, what="the held bytes")
        assert forwarder.held <= WINDOW_SIZE
        peer.sendall(chunk)                          # beyond the window
        thread.join(10)
        assert "overran its window" in str(box.get("error"))
    finally:
        if thread.is_alive():
            stop(thread, box)
        for s in (conn, target, peer):
            if s is not None:
                s.close()


def _endpoint(listener):
    from punchcat.endpoints import Endpoint
    host, port = listener.getsockname()[:2]
    return Endpoint(socket.AF_INET, host, port)


def test_the_link_is_not_read_past_the_receive_budget():
    forwarder = Forwarder(opener=False, reporter=Reporter(NORMAL, Lines()))
    assert forwarder._may_read_link()
    forwarder.held = RECEIVE_BUDGET
    assert not forwarder._may_read_link()
    forwarder.held = 0
    refused = Mux(opener=False, max_sessions=0)
    refused.receive(b"".join(HEADER.pack(OPEN, sid, 0) for sid in range(1, 20_000)))
    forwarder.mux = refused                         # 20,000 refusals waiting to be sent
    assert not forwarder._may_read_link()           # so: stop reading the link


def test_a_half_closed_idle_session_is_reset():
    listener = socket.create_server(("127.0.0.1", 0))
    link, peer = socket.socketpair()
    forwarder = Forwarder(opener=True, reporter=Reporter(NORMAL, Lines()),
                          listener=listener, half_close_timeout=0.3)
    thread, box = run_forwarder(forwarder, link)
    client = socket.create_connection(listener.getsockname()[:2])
    try:
        client.sendall(b"hello")
        client.shutdown(socket.SHUT_WR)          # our side is done; the peer never is
        mux = Mux(opener=False)
        peer.settimeout(5)
        events = unwrap(peer, mux, lambda evs: any(isinstance(e, Reset) for e in evs))
        assert Data(1, b"hello") in events
        reset = next(e for e in events if isinstance(e, Reset))
        assert "half-closed and idle" in reset.reason
        client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            client.recv(10)                      # the local client sees the abort
        assert forwarder.locals == {}
    finally:
        stop(thread, box)
        for s in (client, listener, peer):
            s.close()


class FailingListener(socket.socket):
    """A listening socket (readable: a client waits) whose accept() fails as
    when the process is out of file descriptors."""

    calls = 0

    def accept(self):
        FailingListener.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_failures_rest_the_listener_and_are_said_once_a_second():
    listener = FailingListener(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    waiting = socket.create_connection(listener.getsockname()[:2])
    link, peer = socket.socketpair()
    lines = Lines()
    forwarder = Forwarder(opener=True, reporter=Reporter(NORMAL, lines),
                          listener=listener)
    FailingListener.calls = 0
    thread, box = run_forwarder(forwarder, link)
    time.sleep(2.2)                              # the loop's own pace is what is measured
    stop(thread, box)
    for s in (waiting, listener, peer):
        s.close()
    assert 2 <= FailingListener.calls <= 8, FailingListener.calls     # 0.5 s apart, not a spin
    said = lines.text.count("cannot accept a local connection: Too many open files")
    assert 1 <= said <= 3, lines.text


def test_payloads_reach_their_targets_intact_however_they_travel():
    """Large frames go by splice, small ones and cut ones by copy; two
    sessions interleaved, each byte must arrive once and in order."""
    import hashlib
    import os
    target = socket.create_server(("127.0.0.1", 0))
    received = {}

    def serve():
        for _ in range(2):
            conn, _ = target.accept()

            def drain(conn=conn):
                digest, size = hashlib.sha256(), 0
                while chunk := conn.recv(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                received[len(received)] = (size, digest.hexdigest())
            threading.Thread(target=drain, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    link, peer = socket.socketpair()
    forwarder = Forwarder(opener=False, reporter=Reporter(NORMAL, Lines()),
                          target=_endpoint(target))
    spliced = []
    original = forwarder.rx.push
    forwarder.rx.push = lambda fd, n: (spliced.append(n), original(fd, n))[1]
    thread, box = run_forwarder(forwarder, link)
    try:
        client = Mux(opener=True)
        one, two = client.open(), client.open()
        data = {one: os.urandom(3_000_000), two: os.urandom(2_500_000)}
        for start in range(0, 3_000_000, 100_000):     # interleaved, frames of all sizes
            for sid in (one, two):
                piece = data[sid][start:start + 100_000]
                if piece:
                    client.send(sid, piece[:7])
                    client.send(sid, piece[7:])
        client.send_eof(one)
        client.send_eof(two)
        while client.wants_to_write():
            peer.sendall(records(b"".join(bytes(p) for p in client.pull())))
        wanted = sorted((len(d), hashlib.sha256(d).hexdigest()) for d in data.values())
        wait_for(lambda: len(received) == 2, what="both targets")
        assert sorted(received.values()) == wanted
        if forwarder.zero_copy:
            assert sum(spliced) > 1_000_000        # most of it went by splice
    finally:
        stop(thread, box)
        target.close()
        peer.close()
