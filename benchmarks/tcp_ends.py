#!/usr/bin/env python3
"""Fast local ends for the -L/-c benchmark (so that they are not what limits it).

    tcp_ends.py send PORT FILE      connect to 127.0.0.1:PORT, sendfile FILE, half-close
    tcp_ends.py sink PORT REPORT    accept one connection on 127.0.0.1:PORT, read to EOF,
                                    write {"bytes", "seconds"} (first byte to EOF) to REPORT
"""
import os
import socket
import sys

from sink import drain

role, port = sys.argv[1], int(sys.argv[2])
if role == "send":
    sock = socket.create_connection(("127.0.0.1", port))
    with open(sys.argv[3], "rb") as f:
        size, offset = os.fstat(f.fileno()).st_size, 0
        while offset < size:
            offset += os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
else:
    server = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    conn, _ = server.accept()
    drain(conn.recv_into, sys.argv[3])
