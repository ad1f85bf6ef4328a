"""The hello and the election, fed bytes without a network (sans-IO)."""

import pytest
from hypothesis import given, settings, strategies as st

from punchcat.errors import RemoteProtocolError
from punchcat.handshake import (ACK, COMMIT, FLAG_SECRET, HELLO_LEN, MAGIC, VERSION, Drop,
                                Election, Hello, Mode, NotPunchcat, Phase, Send, Won, parse_hello,
                                session_tag)

LOW, HIGH = Hello(b"\x01" * 16), Hello(b"\xf0" * 16)


def test_hello_layout():
    data = Hello(bytes(range(16)), mode=0, flags=0, session=b"s" * 8, stream=b"t" * 8).encode()
    assert len(data) == HELLO_LEN == 43
    assert data == b"PUNCHCAT" + bytes([VERSION, 0, 0]) + bytes(range(16)) + b"s" * 8 + b"t" * 8
    assert parse_hello(data) == Hello(bytes(range(16)), 0, 0, VERSION, b"s" * 8, b"t" * 8)


def test_parse_round_trip_and_partial_input():
    data = HIGH.encode()
    for cut in range(HELLO_LEN):
        assert parse_hello(data[:cut]) is None
    assert parse_hello(data) == HIGH
    assert parse_hello(data + b"$rest") == HIGH


@pytest.mark.parametrize("banner", [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 400", b"X", b"PUNCHCAX"])
def test_other_protocols_are_rejected_at_the_first_differing_byte(banner):
    with pytest.raises(NotPunchcat):
        parse_hello(banner)


def test_a_prefix_of_the_magic_waits_for_more():
    assert parse_hello(b"PUNCH") is None


def test_version_mismatch_is_a_clear_error():
    with pytest.raises(RemoteProtocolError, match="version 9"):
        parse_hello(MAGIC + bytes([9]))


def test_a_peer_of_the_previous_version_gets_one_clear_line():
    # Each version changed the protocol; a punchcat of the previous release
    # must be told at the hello, before anything else.
    old = VERSION - 1
    old_peer = Hello(b"\x01" * 16, version=old).encode()
    message = (f"peer speaks punchcat protocol version {old} (an older punchcat), this "
               f"punchcat speaks version {VERSION}; run the same punchcat release on both sides")
    with pytest.raises(RemoteProtocolError) as info:
        parse_hello(old_peer)
    assert str(info.value) == message and "\n" not in message
    with pytest.raises(RemoteProtocolError, match=f"version {old} .an older punchcat."):
        parse_hello(old_peer[:len(MAGIC) + 1])           # as soon as the version byte is in
    e = Election(HIGH)
    e.opened("c1")
    (drop,) = e.received("c1", old_peer)           # the connection, not the run
    assert drop == Drop("c1", message, incompatible=True)


def test_a_newer_peer_is_named_as_such():
    with pytest.raises(RemoteProtocolError, match=f"version {VERSION + 1} .a newer punchcat."):
        parse_hello(MAGIC + bytes([VERSION + 1]))


def test_unknown_mode_is_a_protocol_error():
    with pytest.raises(RemoteProtocolError, match="unknown mode"):
        parse_hello(MAGIC + bytes([VERSION, 77, 0]) + bytes(32))


def test_leader_commits_where_the_follower_acknowledged_its_hello():
    e = Election(HIGH)
    assert e.opened("c1") == [Send("c1", HIGH.encode())]
    e.opened("c2")
    assert e.received("c2", LOW.encode()[:10]) == []
    assert e.received("c2", LOW.encode()[10:]) == []     # verified one way only
    assert e.received("c1", LOW.encode() + ACK) == [Send("c1", COMMIT), Won("c1", LOW, b"")]
    assert e.received("c2", ACK) == []                    # already decided
    assert e.phase("c1") is Phase.WON and e.phase("c2") is Phase.ACK


def test_follower_acknowledges_then_waits_for_the_commit():
    e = Election(LOW)
    e.opened("c1")
    e.opened("c2")
    assert e.received("c1", HIGH.encode()) == [Send("c1", ACK)]
    assert e.received("c2", HIGH.encode()) == [Send("c2", ACK)]
    assert e.received("c2", COMMIT + b"user data") == [Won("c2", HIGH, b"user data")]
    assert e.received("c1", COMMIT) == []


def test_hello_and_commit_in_one_segment():
    e = Election(LOW)
    e.opened("c")
    assert e.received("c", HIGH.encode() + COMMIT) == [Send("c", ACK), Won("c", HIGH, b"")]


def test_connection_to_itself_is_dropped():
    e = Election(HIGH)
    e.opened("c")
    (event,) = e.received("c", HIGH.encode())
    assert isinstance(event, Drop) and "itself" in event.reason
    assert e.phase("c") is None


def test_non_punchcat_server_is_dropped_without_user_data():
    e = Election(HIGH)
    sent = e.opened("c")
    (event,) = e.received("c", b"SSH-2.0-OpenSSH\r\n")
    assert isinstance(event, Drop)
    assert sent == [Send("c", HIGH.encode())]    # only our hello ever went out


def test_follower_rejects_data_before_the_commit():
    e = Election(LOW)
    e.opened("c")
    (event,) = e.received("c", HIGH.encode() + b"x")
    assert isinstance(event, Drop)


@pytest.mark.parametrize("after_hello", [b"early", ACK + b"x", COMMIT])
def test_leader_rejects_data_before_the_commit(after_hello):
    e = Election(HIGH)
    e.opened("c")
    (event,) = e.received("c", LOW.encode() + after_hello)
    assert isinstance(event, Drop)


def test_leader_recommits_when_its_choice_fails():
    e = Election(HIGH)
    for c in ("c1", "c2"):
        e.opened(c)
    e.received("c1", LOW.encode() + ACK)
    e.received("c2", LOW.encode() + ACK)     # verified both ways but not chosen
    assert e.phase("c1") is Phase.WON
    assert e.closed("c1") == [Send("c2", COMMIT), Won("c2", LOW, b"")]
    assert e.phase("c1") is None and e.phase("c2") is Phase.WON


def test_follower_takes_another_commit_when_its_winner_fails():
    e = Election(LOW)
    for c in ("c1", "c2"):
        e.opened(c)
        e.received(c, HIGH.encode())
    e.received("c1", COMMIT)
    e.received("c2", COMMIT + b"data")                   # after the decision: kept
    assert e.closed("c1") == [Won("c2", HIGH, b"data")]


def test_each_phase_leads_only_where_the_table_says():
    e = Election(HIGH)
    e.opened("c")
    assert e.phase("c") is Phase.HELLO
    e.received("c", LOW.encode())
    assert e.phase("c") is Phase.ACK
    e.received("c", ACK)
    assert e.phase("c") is Phase.WON


@pytest.mark.parametrize("bad", [
    MAGIC + bytes([VERSION, 99, 0]) + HIGH.side_id + bytes(16),           # unknown mode
    Hello(HIGH.side_id, mode=Mode.LISTEN).encode(),                      # pipe with -L
    Hello(HIGH.side_id, flags=FLAG_SECRET).encode(),                     # a secret on one side
    Hello(HIGH.side_id, session=session_tag("other")).encode(),          # another session
    Hello(HIGH.side_id, stream=b"\x07" * 8).encode(),                    # resuming a stream
], ids=["unknown mode", "mode", "secret", "session", "stream"])
def test_a_hello_that_cannot_work_costs_its_connection_not_the_election(bad):
    e = Election(LOW)
    e.opened("stray")
    e.opened("real")
    (drop,) = e.received("stray", bad)
    assert drop.conn == "stray" and drop.incompatible and "\n" not in drop.reason
    assert e.phase("stray") is None
    assert e.received("real", HIGH.encode() + COMMIT) == [Send("real", ACK), Won("real", HIGH, b"")]


def test_sessions_with_the_same_name_meet():
    tag = session_tag("backup")
    assert tag == session_tag("backup") != session_tag("backup2") and len(tag) == 8
    assert session_tag("") == bytes(8)
    e = Election(Hello(LOW.side_id, session=tag))
    e.opened("c")
    assert e.received("c", Hello(HIGH.side_id, session=tag).encode() + COMMIT)[-1].conn == "c"


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_parse_hello_never_crashes(data):
    try:
        result = parse_hello(data)
    except (NotPunchcat, RemoteProtocolError):
        return
    assert result is None or len(data) >= HELLO_LEN


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_election_survives_any_byte_stream(chunks):
    e = Election(HIGH)
    e.opened("c")
    for chunk in chunks:
        events = e.received("c", chunk)
        for ev in events:
            assert isinstance(ev, (Send, Drop, Won))


def test_the_election_asks_for_no_byte_past_the_commit():
    """What follows ``$`` is the channel's (TLS reads the socket itself)."""
    e = Election(LOW)
    e.opened("c")
    assert e.wanted("c") == HELLO_LEN
    e.received("c", HIGH.encode()[:10])
    assert e.wanted("c") == HELLO_LEN - 10
    e.received("c", HIGH.encode()[10:])
    assert e.wanted("c") == 1                            # the leader's "$"
    e.received("c", COMMIT)
    assert e.wanted("c") == 0 and e.phase("c") is Phase.WON
