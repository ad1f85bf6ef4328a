"""The multiplexer without a network: frames in, events out."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from punchcat.errors import LocalProtocolError, RemoteProtocolError
from punchcat.mux import (DATA, EOF, GRANT_STEP, HEADER, MAX_PAYLOAD, OPEN, REFUSED, RESET,
                          WINDOW, WINDOW_SIZE, Credit, Data, Eof, Mux, Opened, Reset)


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


# -- what a peer can make a side hold (the memory bounds) ---------------------------

def test_opens_beyond_the_limit_are_refused_with_a_reset_made_when_sent():
    server = Mux(opener=False, max_sessions=2)
    events = server.receive(frame(OPEN, 1) + frame(OPEN, 2) + frame(OPEN, 3) + frame(OPEN, 4))
    assert events == [Opened(1), Opened(2)]
    assert server.control_backlog() == 2 * (HEADER.size + len(REFUSED))
    client = Mux(opener=True)
    for _ in range(4):
        client.open()
    assert client.receive(wire(server)) == [Reset(3, "too many sessions"),
                                           Reset(4, "too many sessions")]
    assert server.control_backlog() == 0


def test_a_session_that_ends_frees_a_place():
    server = Mux(opener=False, max_sessions=1)
    assert server.receive(frame(OPEN, 1)) == [Opened(1)]
    server.receive(frame(RESET, 1))
    assert server.receive(frame(OPEN, 2)) == [Opened(2)]


def test_data_for_an_ended_session_draws_on_what_it_could_still_send():
    client, server = pair()
    sid = client.open()
    server.receive(wire(client))
    server.receive(frame(DATA, sid, b"x" * 1000))
    server.reset(sid)                        # the peer may still have WINDOW - 1000 in flight
    server.receive(frame(DATA, sid, b"y" * MAX_PAYLOAD) * 15)
    with pytest.raises(RemoteProtocolError, match="ended session"):
        server.receive(frame(DATA, sid, b"z" * MAX_PAYLOAD))


def test_data_for_a_session_the_peer_reset_is_a_protocol_error():
    client, server = pair()
    sid = client.open()
    server.receive(wire(client))
    server.receive(frame(RESET, sid))        # the peer ended it: it sends nothing more
    with pytest.raises(RemoteProtocolError, match="ended session"):
        server.receive(frame(DATA, sid, b"late"))


def test_control_frames_and_queued_data_are_counted():
    client, server = pair()
    sid = client.open()
    assert client.control_backlog() == HEADER.size
    client.send(sid, b"a" * (MAX_PAYLOAD + 10))
    assert client.queued() == client.queued(sid) == MAX_PAYLOAD + 10
    server.receive(wire(client))
    assert client.queued() == 0 and client.control_backlog() == 0
    server.consumed(sid, GRANT_STEP)
    assert server.control_backlog() == HEADER.size + 4
    client.send(sid, b"b" * 5)
    client.reset(sid)
    assert client.queued() == 0


def test_events_are_delivered_one_at_a_time_before_the_next_frame_is_read():
    server = Mux(opener=False)
    seen = []

    def deliver(event):
        seen.append(event)
        if isinstance(event, Data):
            raise KeyboardInterrupt              # the caller stops at the first payload
    with pytest.raises(KeyboardInterrupt):
        server.receive_into(frame(OPEN, 1) + frame(DATA, 1, b"x") + frame(OPEN, 2), deliver)
    assert seen == [Opened(1), Data(1, b"x")]


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 3), st.binary(max_size=3000)), max_size=12),
       st.lists(st.integers(1, 5000), max_size=20))
def test_payloads_are_the_same_however_the_reads_cut_the_frames(sends, cuts):
    """DATA is streamed in parts when a read cuts a frame; what each session
    receives, and the other events, do not depend on where the cuts fall."""
    client = Mux(opener=True)
    for _ in range(3):
        client.open()
    for sid, data in sends:
        client.send(sid, data)
    client.send_eof(2)
    client.reset(3, "gone")
    blob = wire(client)

    def feed(pieces):
        server = Mux(opener=False)
        got, others = {}, []
        for piece in pieces:
            for event in server.receive(piece):
                if isinstance(event, Data):
                    got[event.sid] = got.get(event.sid, b"") + bytes(event.data)
                else:
                    others.append(event)
        return got, others
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(blob[pos:pos + cut])
        pos += cut
    pieces.append(blob[pos:])
    whole = feed([blob])
    assert feed(pieces) == whole
    expected = {}
    for sid, data in sends:
        if data and sid != 3:
            expected[sid] = expected.get(sid, b"") + data
    assert {sid: data for sid, data in whole[0].items() if sid != 3} == expected
