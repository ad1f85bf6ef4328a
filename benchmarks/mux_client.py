#!/usr/bin/env python3
"""Echo round trips through a forwarded port, optionally beside a bulk session.

Usage: mux_client.py PORT FILE|-   (prints JSON: median_ms, p99_ms, bulk_mib_s)"""
import json
import os
import socket
import statistics
import sys
import threading
import time

port, path = int(sys.argv[1]), sys.argv[2]
done = threading.Event()
bulk = {}


def send_bulk():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"BULK\n")
    size = os.path.getsize(path)
    start = time.perf_counter()
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            offset += os.sendfile(s.fileno(), f.fileno(), offset, size - offset)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    bulk["mib_s"] = size / (time.perf_counter() - start) / 2 ** 20
    done.set()


if path != "-":
    threading.Thread(target=send_bulk, daemon=True).start()
    time.sleep(0.2)          # let the bulk session get going first (the point of the test)
echo = socket.create_connection(("127.0.0.1", port))
echo.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
echo.sendall(b"ECHO\n")
rtts = []
message = b"x" * 64
for _ in range(500):
    if path != "-" and done.is_set() and len(rtts) >= 50:
        break
    start = time.perf_counter()
    echo.sendall(message)
    got = b""
    while len(got) < len(message):
        got += echo.recv(64 - len(got))
    rtts.append((time.perf_counter() - start) * 1000)
done.wait(600) if path != "-" else None
rtts.sort()
print(json.dumps({"median_ms": statistics.median(rtts), "p99_ms": rtts[int(len(rtts) * 0.99) - 1],
                  "count": len(rtts), "bulk_mib_s": bulk.get("mib_s")}))
