#!/usr/bin/env python3
"""Target for the -L/-c latency benchmark: "BULK\\n" sessions are drained,
"ECHO\\n" sessions are echoed.  Usage: mux_target.py PORT"""
import socket
import sys
import threading


def handle(conn):
    head = b""
    while not head.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            return
        head += byte
    if head == b"ECHO\n":
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)
    else:
        while conn.recv(1 << 20):
            pass
    conn.close()


server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    c, _ = server.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
