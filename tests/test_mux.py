"""The multiplexer without a network: frames in, events out."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from punchcat.errors import LocalProtocolError, RemoteProtocolError
from punchcat.mux import (DATA, EOF, HEADER, MAX_PAYLOAD, OPEN, RESET, WINDOW, WINDOW_SIZE,
                          Credit, Data, Eof, Mux, Opened, Reset)


def frame(kind, sid, payload=b""):
    return HEADER.pack(kind, sid, len(payload)) + payload


def wire(mux: Mux) -> bytes:
    """Everything *mux* wants to send, as bytes."""
    out = b""
    while mux.wants_to_write():
        out += b"".join(bytes(part) for part in mux.pull())
    return out


def pair():
    return Mux(opener=True), Mux(opener=False)


def test_open_data_eof_round_trip():
    client, server = pair()
    sid = client.open()
    client.send(sid, b"hello")
    client.send_eof(sid)
    assert server.receive(wire(client)) == [Opened(sid), Data(sid, b"hello"), Eof(sid)]
    server.send(sid, b"world")
    server.send_eof(sid)
    assert client.receive(wire(server)) == [Data(sid, b"world"), Eof(sid)]
    assert sid not in client.sessions and sid not in server.sessions   # both EOFs: done


def test_frames_split_anywhere_are_reassembled():
    client, server = pair()
    sid = client.open()
    client.send(sid, bytes(range(200)) * 10)
    data = wire(client)
    events = []
    for i in range(len(data)):
        events += server.receive(data[i:i + 1])
    assert events[0] == Opened(sid)
    assert b"".join(e.data for e in events[1:]) == bytes(range(200)) * 10


def test_large_sends_are_cut_into_frames():
    client, server = pair()
    sid = client.open()
    client.send(sid, b"x" * (MAX_PAYLOAD * 2 + 5))
    events = server.receive(wire(client))
    assert [len(e.data) for e in events[1:]] == [MAX_PAYLOAD, MAX_PAYLOAD, 5]


def test_credit_runs_out_and_comes_back():
    client, server = pair()
    sid = client.open()
    client.send(sid, b"a" * WINDOW_SIZE)
    assert client.credit(sid) == 0
    with pytest.raises(LocalProtocolError):
        client.send(sid, b"b")
    server.receive(wire(client))
    server.consumed(sid, WINDOW_SIZE // 4)
    assert client.receive(wire(server)) == [Credit(sid)]
    assert client.credit(sid) == WINDOW_SIZE // 4


def test_small_deliveries_are_granted_in_batches():
    client, server = pair()
    sid = client.open()
    client.send(sid, b"a" * 100)
    server.receive(wire(client))
    server.consumed(sid, 100)
    assert not server.wants_to_write()        # not worth a WINDOW frame yet


def test_overrunning_the_window_is_a_protocol_error():
    client, server = pair()
    sid = client.open()
    server.receive(wire(client))
    blob = frame(DATA, sid, b"z" * MAX_PAYLOAD)
    with pytest.raises(RemoteProtocolError, match="window"):
        server.receive(blob * (WINDOW_SIZE // MAX_PAYLOAD + 1))


def test_round_robin_interleaves_sessions():
    client, server = pair()
    bulk, chat = client.open(), client.open()
    client.send(bulk, b"B" * (MAX_PAYLOAD * 3))
    client.send(chat, b"ls\n")
    frames = []
    for part in client.pull(budget=1 << 30):
        frames.append(bytes(part))
    kinds = [HEADER.unpack(f)[:2] for f in frames if len(f) == HEADER.size]
    data_order = [sid for kind, sid in kinds if kind == DATA]
    assert data_order.index(chat) <= 1          # the keystroke goes out right after one bulk frame


def test_reset_drops_queued_data_and_ignores_frames_in_flight():
    client, server = pair()
    sid = client.open()
    server.receive(wire(client))
    client.send(sid, b"late data")
    in_flight = wire(client)
    server.reset(sid, "target refused")
    assert client.receive(wire(server)) == [Reset(sid, "target refused")]
    assert server.receive(in_flight) == []       # ignored: the session is gone
    assert client.credit(sid) == 0


def test_sessions_are_independent():
    client, server = pair()
    a, b = client.open(), client.open()
    server.receive(wire(client))
    server.reset(a)
    client.receive(wire(server))
    client.send(b, b"still here")
    assert server.receive(wire(client)) == [Data(b, b"still here")]


@pytest.mark.parametrize("blob, message", [
    (frame(9, 1), "unknown frame type"),
    (frame(DATA, 0, b"x"), "session 0"),
    (frame(DATA, 5, b"x"), "never opened"),
    (frame(OPEN, 1) + frame(OPEN, 1), "bad OPEN"),
    (frame(OPEN, 3, b"payload"), "at most 0"),
    (HEADER.pack(DATA, 1, MAX_PAYLOAD + 1), "at most"),
    (frame(OPEN, 1) + frame(WINDOW, 1, b"\x00\x01"), "bad WINDOW"),
    (frame(OPEN, 1) + frame(EOF, 1) + frame(EOF, 1), "bad EOF"),
    (frame(OPEN, 1) + frame(EOF, 1) + frame(DATA, 1, b"x"), "after EOF"),
    (frame(OPEN, 1) + frame(WINDOW, 1, struct.pack("!I", 2 ** 31)), "overflow"),
    (HEADER.pack(RESET, 1, 10_000), "at most"),
])
def test_malformed_frames_are_clean_protocol_errors(blob, message):
    server = Mux(opener=False)
    with pytest.raises(RemoteProtocolError, match=message):
        server.receive(blob)


def test_the_c_side_cannot_open_sessions():
    client = Mux(opener=True)
    with pytest.raises(RemoteProtocolError, match="open"):
        client.receive(frame(OPEN, 1))
    with pytest.raises(LocalProtocolError):
        Mux(opener=False).open()


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(blob):
    server = Mux(opener=False)
    try:
        events = server.receive(blob)
    except RemoteProtocolError:
        return
    assert all(isinstance(e, (Opened, Data, Eof, Reset, Credit)) for e in events)
