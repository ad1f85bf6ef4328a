"""The pipe over socketpairs: both directions, half-close, every kind of stdin/stdout."""

import os
import socket
import threading

import pytest

from punchcat.errors import LinkLost
from punchcat.relay import pipe


def run_pipe(sock, stdin_fd, stdout_fd, leftover=b""):
    box = {}

    def target():
        try:
            box["stats"] = pipe(sock, stdin_fd, stdout_fd, leftover)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def read_all(sock):
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_file_in_file_out_both_directions(tmp_path, payload):
    up, down = payload(3_000_000), payload(2_000_000)
    src = tmp_path / "in"
    src.write_bytes(up)
    ours, theirs = socket.socketpair()
    with open(src, "rb") as fin, open(tmp_path / "out", "wb") as fout:
        t, box = run_pipe(ours, fin.fileno(), fout.fileno(), leftover=b"early:")
        sender = threading.Thread(target=lambda: (theirs.sendall(down), theirs.shutdown(socket.SHUT_WR)))
        sender.start()
        got = read_all(theirs)
        sender.join()
        t.join(10)
    assert "error" not in box
    assert got == up
    assert (tmp_path / "out").read_bytes() == b"early:" + down
    assert box["stats"].sent == len(up) and box["stats"].received == len(down) + 6


def test_pipes_and_half_close(payload):
    data = payload(500_000)
    ours, theirs = socket.socketpair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t, box = run_pipe(ours, in_r, out_w)
    os.write(in_w, b"line one\n")
    assert theirs.recv(100) == b"line one\n"           # sent at once, no buffering
    os.close(in_w)                                      # stdin EOF -> peer sees EOF
    assert read_all(theirs) == b""
    sender = threading.Thread(                          # peer can still send
        target=lambda: (theirs.sendall(data), theirs.shutdown(socket.SHUT_WR)), daemon=True)
    sender.start()
    received = b""
    while chunk := os.read(out_r, 65536):
        received += chunk
        if len(received) == len(data):
            break
    t.join(10)
    assert not t.is_alive() and "error" not in box
    assert received == data


def test_dev_null_stdin_sends_nothing():
    ours, theirs = socket.socketpair()
    out_r, out_w = os.pipe()
    with open(os.devnull, "rb") as null:
        t, box = run_pipe(ours, null.fileno(), out_w)
        assert read_all(theirs) == b""
        theirs.sendall(b"bye")
        theirs.close()
        t.join(10)
    assert os.read(out_r, 10) == b"bye"
    assert "error" not in box


def test_reset_by_peer_is_an_error():
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    t, box = run_pipe(client, in_r, out_w)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    server.close()                                      # RST
    t.join(10)
    assert isinstance(box.get("error"), LinkLost)
    listener.close()
