#!/usr/bin/env python3
"""A plain transit-relay client, the baseline for punchcat through the relay.

    relay_client.py HOST:PORT TOKEN SIDE send FILE     # sendfile() FILE, then close
    relay_client.py HOST:PORT TOKEN SIDE recv          # read to the end, to stdout

It speaks the relay's handshake and then moves raw bytes: no encryption, no
framing, nothing punchcat adds (what two bare clients get from the relay).
"""
import os
import socket
import sys

relay, token, side, what = sys.argv[1:5]
host, port = relay.rsplit(":", 1)
sock = socket.create_connection((host, int(port)))
sock.sendall(f"please relay {token} for side {side}\n".encode())
answer = b""
while not answer.endswith(b"\n"):
    answer += sock.recv(1)
assert answer == b"ok\n", answer
if what == "send":
    with open(sys.argv[5], "rb") as f:
        size = os.fstat(f.fileno()).st_size
        sent = 0
        while sent < size:
            sent += os.sendfile(sock.fileno(), f.fileno(), sent, size - sent)
    sock.close()
else:
    buf = bytearray(4 << 20)
    out = sys.stdout.buffer
    while n := sock.recv_into(buf):
        out.write(memoryview(buf)[:n])
    out.flush()
