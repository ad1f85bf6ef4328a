"""The stream's records, positions and resuming, without a network (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from punchcat import resume, stream
from punchcat.errors import AuthenticationFailed, RemoteProtocolError
from punchcat.retention import Ring


def events(data: bytes, rx=None) -> list:
    rx = rx or stream.Receiver()
    out: list = []
    rx.feed(data, lambda e: out.append(stream.Data(bytes(e.data)) if isinstance(e, stream.Data)
                                       else e))
    return out


def test_records_round_trip_cut_anywhere():
    wire = (stream.data_header(5) + b"hello" + stream.position_record(stream.ACK, 7)
            + stream.record(stream.KEY, b"k" * 32) + stream.position_record(stream.EOF, 5)
            + stream.abort_record("gone"))
    whole = events(wire)
    for cut in range(len(wire)):
        rx = stream.Receiver()
        got = events(wire[:cut], rx) + events(wire[cut:], rx)
        data = b"".join(e.data for e in got if isinstance(e, stream.Data))
        assert data == b"hello"
        assert [e for e in got if not isinstance(e, stream.Data)] == \
            [e for e in whole if not isinstance(e, stream.Data)]


@pytest.mark.parametrize("wire, needle", [
    (stream.record(9, b""), "unknown record type 9"),
    (stream.HEADER.pack(stream.DATA, 0), "DATA record of 0"),
    (stream.HEADER.pack(stream.DATA, stream.MAX_DATA + 1), "DATA record of"),
    (stream.HEADER.pack(stream.ACK, 9) + bytes(9), "ACK record of 9"),
    (stream.HEADER.pack(stream.ABORT, 201) + bytes(201), "ABORT reason of 201"),
    (stream.position_record(stream.EOF, 0) + stream.data_header(1) + b"x", "data after its EOF"),
])
def test_malformed_records_are_the_peers_protocol_errors(wire, needle):
    with pytest.raises(RemoteProtocolError, match=needle):
        events(wire)


def test_a_data_payload_may_be_moved_around_the_parser():
    rx = stream.Receiver()
    assert rx.header_needed() == stream.HEADER.size
    events(stream.data_header(10) + b"abc", rx)
    assert rx.payload_pending() == 7 and rx.header_needed() == 0
    rx.payload_moved(7)                              # spliced by the I/O layer
    assert rx.payload_pending() == 0 and rx.header_needed() == stream.HEADER.size


def test_the_ring_keeps_what_is_not_confirmed_and_gives_it_again():
    ring = Ring(16)
    assert ring.append(b"0123456789") == 10
    ring.release(4)
    assert ring.append(b"abcdefghij") == 10          # wraps round
    assert len(ring) == 16 and ring.room() == 0
    again = b""
    position = 4
    while position < ring.end:
        view = ring.span(position, 100)
        again += bytes(view)
        position += len(view)
    assert again == b"456789abcdefghij"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000),
       cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=5),
       chunk=st.integers(min_value=1, max_value=700), ack_every=st.integers(1, 500))
def test_any_links_cut_anywhere_deliver_the_stream_once_and_in_order(data, cuts, chunk,
                                                                     ack_every):
    """A sender and a receiver across links that break at arbitrary byte
    counts of the wire (what was in flight is lost); each new link starts
    with RESUME.  The receiver gets the data exactly once, in order."""
    sender, receiver = stream.Offsets(), stream.Offsets()
    ring = Ring(1 << 12)
    read = 0                                          # input taken into the ring
    got = bytearray()
    cuts = sorted(set(cuts))
    for link in range(len(cuts) + 1):
        limit = cuts[link] if link < len(cuts) else None    # wire bytes this link carries
        rx_sender, rx_receiver = stream.Receiver(), stream.Receiver()
        to_receiver = bytearray()
        to_sender = bytearray()
        if link:                                      # both say where they stand
            to_receiver += stream.position_record(stream.RESUME, sender.received)
            to_sender += stream.position_record(stream.RESUME, receiver.received)
        carried = 0
        resumed = {"sender": not link, "receiver": not link}

        def on_sender(event):
            if isinstance(event, stream.Resume):
                sender.resume_from(event.position)
                resumed["sender"] = True
            elif isinstance(event, stream.Ack):
                sender.peer_acked(event.position)
                ring.release(min(sender.acked, ring.end))

        def on_receiver(event):
            if isinstance(event, stream.Resume):
                resumed["receiver"] = True
            elif isinstance(event, stream.Data):
                got.extend(event.data)
                receiver.took(len(event.data))
            elif isinstance(event, stream.Eof):
                receiver.peer_ended(event.total)
        for _step in range(10_000):                   # a bug must fail, not hang
            if sender.delivered_all() and receiver.peer_eof is not None:
                break
            rx_sender.feed(bytes(to_sender), on_sender)
            to_sender.clear()
            if resumed["sender"]:
                if read < len(data) and ring.room():
                    read += ring.append(data[read:read + min(chunk, ring.room())])
                if sender.sent < ring.end:
                    view = ring.span(sender.sent, chunk)
                    sender.sent += len(view)
                    to_receiver += stream.data_header(len(view)) + bytes(view)
                elif read == len(data) and not sender.eof_sent:
                    sender.eof, sender.eof_sent = sender.sent, True
                    to_receiver += stream.position_record(stream.EOF, sender.sent)
            if limit is not None and carried + len(to_receiver) >= limit:
                rx_receiver.feed(bytes(to_receiver[:limit - carried]), on_receiver)
                break                                 # the link dies here
            carried += len(to_receiver)
            rx_receiver.feed(bytes(to_receiver), on_receiver)
            to_receiver.clear()
            owed = receiver.received - receiver.acked_out
            if owed >= ack_every or (owed and receiver.peer_eof is not None):
                to_sender += receiver.ack()
        if sender.delivered_all() and receiver.peer_eof is not None:
            break                                     # done on this link
    assert bytes(got) == data
    assert sender.delivered_all() and receiver.peer_eof == len(data)


def test_resume_positions_out_of_range_are_the_peers_lie():
    off = stream.Offsets()
    off.sent, off.acked = 100, 40
    with pytest.raises(RemoteProtocolError):
        off.resume_from(30)                           # below what it confirmed
    with pytest.raises(RemoteProtocolError):
        off.resume_from(101)                          # beyond what was sent
    off.resume_from(70)
    assert (off.sent, off.acked) == (70, 70)
    with pytest.raises(RemoteProtocolError):
        off.peer_acked(71)                            # an ACK of what was not (re)sent


def test_the_resume_proofs_hold_only_with_the_key():
    key, other = b"k" * 32, b"x" * 32
    hellos = b"leader hello" + b"follower hello"
    leader, follower = resume.Prover(key, True), resume.Prover(key, False)
    claim = leader.claim(b"binding", hellos)
    answer = follower.verify(claim, b"binding", hellos)
    leader.confirm(answer)
    with pytest.raises(AuthenticationFailed):
        resume.Prover(other, False).verify(claim, b"binding", hellos)
    with pytest.raises(AuthenticationFailed):
        follower.verify(claim, b"another link's binding", hellos)   # relayed: refused
    assert resume.stream_id(key) != resume.stream_id(other) and len(resume.stream_id(key)) == 8
