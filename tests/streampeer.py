"""The far end of a stream for tests: speaks punchcat's records on a socket
(:mod:`punchcat.stream`) the way a real peer does: DATA and EOF, an ACK for
what came, the end once both EOFs are confirmed."""

from __future__ import annotations

import socket
import threading

from punchcat import stream


class Peer:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rx = stream.Receiver()
        self.off = stream.Offsets()
        self.got = bytearray()
        self.events: list = []            # every event but Data, in order
        self._send_lock = threading.Lock()

    # -- sending -------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def send(self, data: bytes, record: int = 1 << 20) -> None:
        for start in range(0, len(data), record):
            chunk = data[start:start + record]
            self.off.sent += len(chunk)
            self._send(stream.data_header(len(chunk)) + chunk)

    def send_eof(self) -> None:
        self.off.eof = self.off.sent
        self.off.eof_sent = True
        self._send(stream.position_record(stream.EOF, self.off.sent))

    # -- receiving -----------------------------------------------------------
    def _event(self, event) -> None:
        if isinstance(event, stream.Data):
            self.got += event.data
            self.off.took(len(event.data))
        elif isinstance(event, stream.Eof):
            self.off.peer_ended(event.total)
            self.events.append(event)
        elif isinstance(event, stream.Ack):
            self.off.peer_acked(event.position)
            self.events.append(event)
        else:
            self.events.append(event)
        if self.off.ack_due():
            self._send(self.off.ack())

    def pump(self, until) -> bool:
        """Read records until *until()* holds (True) or the link ends (False)."""
        while not until():
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return False
            if not data:
                return until()
            self.rx.feed(data, self._event)
        return True

    def read(self, n: int) -> bytes:
        """At least *n* more data bytes (waits for them)."""
        start = len(self.got)
        self.pump(lambda: len(self.got) - start >= n)
        return bytes(self.got[start:])

    def exchange(self, data: bytes) -> bytes:
        """Send *data* and EOF while receiving everything; returns what came
        once both directions are done and confirmed, then closes."""
        sender = threading.Thread(target=lambda: (self.send(data), self.send_eof()), daemon=True)
        sender.start()
        self.pump(self.off.finished)
        sender.join()
        self.sock.close()
        return bytes(self.got)


def exchange_in_thread(sock: socket.socket, data: bytes) -> tuple[threading.Thread, dict]:
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("got", Peer(sock).exchange(data)),
                         daemon=True)
    t.start()
    return t, box
