"""The transit relay's protocol as punchcat speaks it (no network)."""

import re

import pytest
from hypothesis import given, strategies as st

from punchcat.handshake import session_tag
from punchcat.traverse.transit import MAX_LINE, parse_answer, request, token


def test_the_request_is_the_relays_new_handshake_line():
    line = request(token(42, bytes(8), bytes(8)), bytes(range(16)))
    assert re.fullmatch(rb"please relay [0-9a-f]{64} for side 0001020304050607\n", line)


def test_the_token_is_made_of_public_facts_and_differs_per_bucket_session_and_stream():
    base = token(42, bytes(8), bytes(8))
    assert base == token(42, bytes(8), bytes(8))            # both sides compute the same
    others = {token(43, bytes(8), bytes(8)), token(42, session_tag("backup"), bytes(8)),
              token(42, bytes(8), b"\x01" * 8)}
    assert base not in others and len(others) == 3


def test_the_token_does_not_depend_on_the_secret():
    # Its inputs are the bucket, the session tag and the stream: a plaintext
    # token from the secret would let any observer test guesses offline.
    import inspect
    assert list(inspect.signature(token).parameters) == ["bucket", "session", "stream"]


@pytest.mark.parametrize("peeked, expected", [
    (b"ok\n", (3, b"ok")),
    (b"ok\nPUNCHCAT\x03", (3, b"ok")),                 # the peer's hello stays in the socket
    (b"ok", None),
    (b"impatient\n", (10, b"impatient")),
])
def test_the_answer_is_one_line_and_no_more(peeked, expected):
    assert parse_answer(peeked) == expected


def test_an_answer_without_a_newline_in_its_first_64_bytes_is_refused():
    with pytest.raises(ValueError):
        parse_answer(b"x" * MAX_LINE)


@given(st.binary(max_size=200))
def test_parsing_any_answer_returns_or_refuses(data):
    try:
        result = parse_answer(data)
    except ValueError:
        return
    assert result is None or (0 < result[0] <= MAX_LINE and data[result[0] - 1:result[0]] == b"\n")
