"""The relay over local sockets: both directions, half-close, every kind of input and output.

Each fast path (sendfile from a file, splice through a pipe of our own to a
pipe, file or socket) and the plain copy (a pipe into the retention ring, a
terminal, /dev/null, an encrypted channel) is checked with checksums.  The
far end speaks the stream's records (tests/streampeer.py).
"""

import hashlib
import os
import socket
import threading
import time

import pytest

from punchcat import stream
from punchcat.channel import PlainChannel
from punchcat.ends import kind
from punchcat.errors import LinkLost, OutputFailed, PeerStopped
from punchcat.relay import relay

from streampeer import Peer, exchange_in_thread


def tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def run_relay(sock, source_fd, sink_fd, leftover=b"", **kwargs):
    box = {}

    def target():
        try:
            box["stats"] = relay(PlainChannel(sock), source_fd, sink_fd, leftover, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def records(data: bytes) -> bytes:
    """*data* as DATA records, as a peer sends it."""
    return stream.data_header(len(data)) + data if data else b""


def drain_fd(fd, out: list, chunk=1 << 20, pause=0.0):
    def go():
        while data := os.read(fd, chunk):
            out.append(data)
            if pause:
                time.sleep(pause)     # a slow reader, by design
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_kinds_of_file_descriptors(tmp_path):
    r, w = os.pipe()
    a, b = socket.socketpair()
    master, slave = os.openpty()
    with open(tmp_path / "f", "wb") as f, open(os.devnull, "rb") as null:
        assert [kind(f.fileno()), kind(r), kind(a.fileno()), kind(slave), kind(null.fileno())] \
            == ["file", "pipe", "socket", "tty", "other"]


def test_file_in_file_out_both_directions(tmp_path, payload):
    """sendfile from a regular file; splice through our pipe into a regular file."""
    up, down = payload(8_000_000), payload(6_000_000)
    (tmp_path / "in").write_bytes(up)
    ours, theirs = tcp_pair()
    with open(tmp_path / "in", "rb") as fin, open(tmp_path / "out", "wb") as fout:
        t, box = run_relay(ours, fin.fileno(), fout.fileno(), leftover=records(b"early:"))
        peer = Peer(theirs)
        peer.off.sent = 6                     # it sent that with the commit
        got = peer.exchange(down)
        t.join(20)
    assert "error" not in box, box
    assert sha(got) == sha(up)
    assert sha((tmp_path / "out").read_bytes()) == sha(b"early:" + down)
    assert box["stats"].sent == len(up) and box["stats"].received == len(down) + 6


def test_file_input_from_its_current_offset(tmp_path):
    (tmp_path / "in").write_bytes(b"HEADER\n" + b"body" * 1000)
    ours, theirs = tcp_pair()
    out_r, out_w = os.pipe()
    with open(tmp_path / "in", "rb") as fin:
        fin.readline()                       # the caller consumed the first line
        os.lseek(fin.fileno(), fin.tell(), os.SEEK_SET)
        t, box = run_relay(ours, fin.fileno(), out_w)
        got = Peer(theirs).exchange(b"")
        t.join(10)
    assert got == b"body" * 1000


def test_pipe_in_pipe_out_with_half_close(payload):
    """The stdin pipe through the retention ring to the socket; the socket to
    the stdout pipe by splice."""
    up, down = payload(5_000_000), payload(7_000_000)
    ours, theirs = tcp_pair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t, box = run_relay(ours, in_r, out_w)
    threading.Thread(target=lambda: (os.write(in_w, up[:10]), os.write(in_w, up[10:]),
                                     os.close(in_w)), daemon=True).start()
    peer = Peer(theirs)
    assert peer.pump(lambda: peer.off.peer_eof is not None)   # stdin's EOF became the peer's
    assert bytes(peer.got) == up
    received: list = []
    reader = drain_fd(out_r, received)
    got = peer.exchange(down)
    t.join(20)
    os.close(out_w)
    reader.join(10)
    assert "error" not in box, box
    assert sha(got) == sha(up)
    assert sha(b"".join(received)) == sha(down)


def test_a_typed_line_is_sent_at_once():
    """A terminal as stdin: the line goes out before any EOF."""
    ours, theirs = tcp_pair()
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    t, box = run_relay(ours, slave, out_w)
    os.write(master, b"hello there\n")
    theirs.settimeout(5)
    peer = Peer(theirs)
    assert peer.read(12) == b"hello there\n"
    os.write(master, b"second line\n")
    assert peer.read(12) == b"second line\n"
    theirs.close()


def test_socket_to_socket_relay(payload):
    """-c serving a pipe peer: a target socket on both ends of the relay."""
    data_up, data_down = payload(3_000_000), payload(4_000_000)
    link_ours, link_theirs = tcp_pair()
    target_ours, target_theirs = tcp_pair()
    t, box = run_relay(link_ours, target_ours.fileno(), target_ours.fileno(),
                      sink_eof=lambda: target_ours.shutdown(socket.SHUT_WR))
    def send_and_close():
        target_theirs.sendall(data_up)
        target_theirs.shutdown(socket.SHUT_WR)
    s1 = threading.Thread(target=send_and_close, daemon=True)
    s1.start()
    s2, box2 = exchange_in_thread(link_theirs, data_down)
    got_target = bytearray()
    while chunk := target_theirs.recv(1 << 20):
        got_target += chunk
    s1.join()
    s2.join(20)
    got_link = box2["got"]
    t.join(20)
    assert "error" not in box, box
    assert sha(got_link) == sha(data_up)
    assert sha(got_target) == sha(data_down)


def test_slow_reader_loses_nothing(payload):
    data = payload(3_000_000)
    ours, theirs = tcp_pair()
    in_r, in_w = os.pipe()
    os.close(in_w)
    out_r, out_w = os.pipe()
    t, box = run_relay(ours, in_r, out_w)
    received: list = []
    reader = drain_fd(out_r, received, chunk=4096, pause=0.0005)
    Peer(theirs).exchange(data)
    t.join(60)
    os.close(out_w)
    reader.join(60)
    assert "error" not in box, box
    assert sha(b"".join(received)) == sha(data)


def test_dev_null_in_and_out():
    ours, theirs = tcp_pair()
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        t, box = run_relay(ours, null_in.fileno(), null_out.fileno())
        assert Peer(theirs).exchange(b"into the void") == b""
        t.join(10)
    assert "error" not in box
    assert box["stats"].received == len(b"into the void")


@pytest.mark.parametrize("output", ["pipe", "devnull"], ids=["splice", "copy"])
def test_reset_by_peer_is_the_same_link_error_on_every_path(output):
    ours, theirs = tcp_pair()
    in_r, in_w = os.pipe()
    if output == "pipe":
        out_r, out_w = os.pipe()
    else:
        out_w = os.open(os.devnull, os.O_WRONLY)
    t, box = run_relay(ours, in_r, out_w)
    Peer(theirs).send(b"some data first")
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    theirs.close()                                      # RST
    t.join(10)
    assert isinstance(box.get("error"), LinkLost)
    assert str(box["error"]) == "connection lost while receiving: Connection reset by peer"


def test_a_link_that_ends_before_the_stream_does_is_lost_not_done(payload):
    """Without a secret too, a cut is no longer mistaken for the end: the
    stream's EOF says where the data ends."""
    ours, theirs = tcp_pair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t, box = run_relay(ours, in_r, out_w)
    Peer(theirs).send(payload(100_000))
    theirs.close()                                      # FIN, but no EOF record
    t.join(10)
    assert isinstance(box.get("error"), LinkLost)
    assert "ended before the stream did" in str(box["error"])


def test_an_abort_from_the_peer_ends_it_with_the_peers_escaped_reason():
    ours, theirs = tcp_pair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t, box = run_relay(ours, in_r, out_w)
    theirs.sendall(stream.abort_record("cannot write output: Broken pipe\x1b[2J"))
    t.join(10)
    assert isinstance(box.get("error"), PeerStopped)
    assert str(box["error"]) == "the peer stopped: cannot write output: Broken pipe\\x1b[2J"


def test_closed_stdout_is_an_output_error(payload):
    ours, theirs = tcp_pair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(out_r)                                     # nobody reads stdout
    t, box = run_relay(ours, in_r, out_w)
    exchange_in_thread(theirs, payload(100_000))
    t.join(10)
    assert isinstance(box.get("error"), OutputFailed)
    assert str(box["error"]) == "cannot write output: Broken pipe"


@pytest.mark.parametrize("leftover", [b"", b"$-follows"])
def test_unix_socketpair_channel(leftover):
    """A unix-domain channel (the socketpair kind) works as well."""
    ours, theirs = socket.socketpair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t, box = run_relay(ours, in_r, out_w, leftover=records(leftover))
    os.write(in_w, b"abc")
    os.close(in_w)
    peer = Peer(theirs)
    peer.off.sent = len(leftover)
    assert peer.exchange(b"xyz") == b"abc"
    t.join(10)
    os.close(out_w)
    assert os.read(out_r, 100) == leftover + b"xyz"


def test_request_and_answer_through_a_stdout_pipe():
    """The reader of stdout gets bytes that are there while punchcat waits for more.

    (A splice straight from the socket into the stdout pipe holds the pipe's
    lock while it waits for the network, so a reader blocks: ssh as a
    ProxyCommand deadlocked that way.)
    """
    ours, theirs = tcp_pair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t, box = run_relay(ours, in_r, out_w)
    peer = Peer(theirs)
    theirs.settimeout(5)
    for turn in range(3):
        peer.send(b"question %d\n" % turn)
        got = {}
        reader = threading.Thread(target=lambda: got.setdefault("line", os.read(out_r, 100)),
                                  daemon=True)
        reader.start()
        reader.join(5)
        assert got.get("line") == b"question %d\n" % turn, "the stdout reader is stuck"
        os.write(in_w, b"answer %d\n" % turn)
        assert peer.read(9) == b"answer %d\n" % turn
    os.close(in_w)
    peer.send_eof()
    assert peer.pump(peer.off.finished)
    theirs.close()
    t.join(10)
    assert "error" not in box
