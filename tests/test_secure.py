"""The secret: SRP inside TLS, codes, the encrypted stream, tampering and truncation (no network)."""

import base64
import decimal
import importlib.resources
import math
import os
import socket
import threading

import re
import ssl
import struct
import time

import pytest
from hypothesis import given, settings, strategies as st

from punchcat import srp, stream
from punchcat.errors import LinkLost, PunchcatError
from punchcat.handshake import FLAG_SECRET, Hello
from punchcat.relay import relay
from punchcat.secret import (generate_code, generate_secret, normalize_secret, read_secret_file,
                             write_secret_file)
from punchcat.secure import (EXTENDED_MASTER_SECRET, AuthenticationFailed, SecureChannel,
                             GROUP, ServerFlightScan, _context, secure)

from streampeer import Peer


class ChannelSocket:
    """A channel seen as a socket (for the test peer)."""

    def __init__(self, channel):
        self.channel = channel

    def recv(self, size: int) -> bytes:
        buf = bytearray(size)
        return bytes(buf[:self.channel.recv_into(buf)])

    def sendall(self, data) -> None:
        self.channel.sendall(data)

    def close(self) -> None:
        self.channel.close()


LEADER, FOLLOWER = Hello(b"\xee" * 16, flags=FLAG_SECRET), Hello(b"\x11" * 16, flags=FLAG_SECRET)
HELLOS = LEADER.encode() + FOLLOWER.encode()


def both_sides(secret_leader, secret_follower, wrap=None):
    """Run secure() on both ends of a socketpair; returns (leader, follower) results."""
    a, b = socket.socketpair()
    if wrap:
        a, b = wrap(a, b)
    out = {}

    def side(name, sock, leader, secret):
        try:
            local, peer = (LEADER, FOLLOWER) if leader else (FOLLOWER, LEADER)
            out[name] = secure(sock, secret, leader, local.encode(), peer.encode(), b"")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[name] = exc
            sock.close()
    threads = [threading.Thread(target=side, args=("leader", a, True, secret_leader)),
               threading.Thread(target=side, args=("follower", b, False, secret_follower))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out["leader"], out["follower"]


def test_generated_secrets_are_fresh_and_long():
    a, b = generate_secret(), generate_secret()
    assert a != b and len(a) >= 32


def test_right_secret_gives_an_encrypted_stream_both_ways():
    leader, follower = both_sides("correct horse", "correct horse")
    assert isinstance(leader, SecureChannel) and isinstance(follower, SecureChannel)
    leader.sendall(b"from the leader")
    follower.sendall(b"from the follower")
    buf = bytearray(100)
    assert bytes(buf[:follower.recv_into(buf)]) == b"from the leader"
    assert bytes(buf[:leader.recv_into(buf)]) == b"from the follower"
    # Both derived the same resume key from SRP and this link's binding.
    assert leader.resume_key == follower.resume_key and len(leader.resume_key) == 32


@pytest.mark.parametrize("leader_secret, follower_secret", [("right", "wrong"), ("wrong", "right")])
def test_wrong_secret_fails_on_both_sides(leader_secret, follower_secret):
    leader, follower = both_sides(leader_secret, follower_secret)
    assert isinstance(leader, AuthenticationFailed), leader
    assert isinstance(follower, AuthenticationFailed), follower
    assert "authentication failed" in str(leader) and "authentication failed" in str(follower)


def test_a_peer_that_is_not_tls_fails_authentication():
    a, b = socket.socketpair()
    b.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
    b.close()
    with pytest.raises(AuthenticationFailed):
        secure(a, "s", False, FOLLOWER.encode(), LEADER.encode(), b"")


class Flipper:
    """A relay between the peers that flips one byte of the encrypted stream."""

    def __init__(self, at):
        self.at = at

    def __call__(self, a, b):
        a2, a_inner = socket.socketpair()
        b2, b_inner = socket.socketpair()
        count = {"ab": 0}

        def pump(src, dst, key):
            try:
                while data := src.recv(65536):
                    if key == "ab":
                        start = count["ab"]
                        if start <= self.at < start + len(data):
                            data = bytearray(data)
                            data[self.at - start] ^= 0x40
                        count["ab"] += len(data)
                    dst.sendall(bytes(data))
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass          # one side gave up: that is the point of the test
        threading.Thread(target=pump, args=(a_inner, b_inner, "ab"), daemon=True).start()
        threading.Thread(target=pump, args=(b_inner, a_inner, "ba"), daemon=True).start()
        return a2, b2


def test_a_flipped_byte_is_detected_and_nothing_corrupt_is_delivered():
    # Let the handshake and proofs through, then flip a byte of the payload.
    leader, follower = both_sides("s", "s", wrap=Flipper(at=100_000))
    assert isinstance(leader, SecureChannel), leader
    payload = os.urandom(400_000)

    def send():
        try:
            leader.sendall(payload)
        except LinkLost:
            pass              # the follower gave up on the flipped byte: expected
    threading.Thread(target=send, daemon=True).start()
    received = bytearray()
    buf = bytearray(1 << 16)
    with pytest.raises(LinkLost, match="integrity"):
        while n := follower.recv_into(buf):
            received += buf[:n]
    assert payload.startswith(bytes(received))       # only authentic bytes came out
    assert len(received) < 100_000


def test_a_tcp_end_is_the_links_end_and_the_stream_calls_it_early():
    """The channel is a byte pipe; where the data ends is the stream's EOF
    record, encrypted and authenticated, so a cut is never an end."""
    leader, follower = both_sides("s", "s")
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    result = {}

    def run():
        try:
            relay(follower, in_r, out_w)
        except LinkLost as exc:
            result["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    leader.sendall(stream.data_header(7) + b"partial")
    leader.sock.shutdown(socket.SHUT_WR)             # the TCP end, no EOF record
    t.join(10)
    assert "ended before the stream did" in str(result.get("error"))
    assert os.read(out_r, 100) == b"partial"


def test_the_relay_runs_over_the_secure_channel():
    leader, follower = both_sides("s", "s")
    data = os.urandom(3_000_000)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("stats", relay(leader, in_r, out_w)),
                         daemon=True)
    t.start()
    writer = threading.Thread(target=lambda: (os.write(in_w, data[:1000]), os.write(in_w, data[1000:]),
                                              os.close(in_w)), daemon=True)
    writer.start()
    got = Peer(ChannelSocket(follower)).exchange(b"")
    t.join(20)
    assert bytes(got) == data


def _pem_integers(pem: str) -> tuple[int, int]:
    der = base64.b64decode("".join(line for line in pem.splitlines() if "-----" not in line))

    def integer(pos):
        assert der[pos] == 2
        length, pos = der[pos + 1], pos + 2
        if length & 0x80:
            size = length & 0x7F
            length, pos = int.from_bytes(der[pos:pos + size], "big"), pos + size
        return int.from_bytes(der[pos:pos + length], "big"), pos + length
    p, pos = integer(2 + (der[1] & 0x7F if der[1] & 0x80 else 0))
    g, _ = integer(pos)
    return p, g


def test_dh_parameters_are_rfc_7919_ffdhe3072():
    pem = importlib.resources.files("punchcat").joinpath("ffdhe3072.pem").read_text()
    p, g = _pem_integers(pem)
    decimal.getcontext().prec = 1000
    e = sum(decimal.Decimal(1) / math.factorial(k) for k in range(500))
    assert g == 2
    assert p == 2 ** 3072 - 2 ** 3008 + (int(decimal.Decimal(2) ** 2942 * e) + 2625351) * 2 ** 64 - 1
    assert GROUP == (p, g)               # what the leader accepts is what the follower sends


#: RFC 7919's ffdhe2048: a sound group, but not punchcat's.
FFDHE2048 = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    size = len(body)
    head = bytes([size]) if size < 0x80 else bytes([0x82]) + size.to_bytes(2, "big")
    return b"\x02" + head + body


def _pem(p: int, g: int) -> str:
    body = _der_integer(p) + _der_integer(g)
    der = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    text = base64.b64encode(der).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN DH PARAMETERS-----\n" + "\n".join(lines) + "\n-----END DH PARAMETERS-----\n"


def _handshake_types(stream: bytes) -> list[int]:
    """The handshake message types in a stream of TLS records (plaintext part)."""
    types, pos, messages = [], 0, bytearray()
    while pos + 5 <= len(stream):
        kind, length = stream[pos], int.from_bytes(stream[pos + 3:pos + 5], "big")
        if kind == 22:
            messages += stream[pos + 5:pos + 5 + length]
        elif kind == 20:                 # ChangeCipherSpec: what follows is encrypted
            break
        pos += 5 + length
    while len(messages) >= 4:
        types.append(messages[0])
        del messages[:4 + int.from_bytes(messages[1:4], "big")]
    return types


@pytest.mark.parametrize("group", ["ffdhe2048", "generator of order 2"])
def test_the_leader_refuses_a_foreign_dh_group_before_it_sends_its_key_share(tmp_path, group):
    p, _ = GROUP
    params = tmp_path / "dh.pem"
    params.write_text(FFDHE2048 if group == "ffdhe2048" else _pem(p, p - 1))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ADH-AES128-GCM-SHA256:@SECLEVEL=0")
    ctx.load_dh_params(str(params))
    a, b = socket.socketpair()
    out = {}

    def victim():
        try:
            out["victim"] = secure(a, "s", True, LEADER.encode(), FOLLOWER.encode(), b"")
        except AuthenticationFailed as exc:
            out["victim"] = exc
        a.close()
    t = threading.Thread(target=victim)
    t.start()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = ctx.wrap_bio(incoming, outgoing, server_side=True)
    received = bytearray()
    b.settimeout(10)
    while True:
        try:
            server.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                b.sendall(outgoing.read())
            data = b.recv(65536)
            if not data:
                break
            received += data
            incoming.write(data)
        except (ssl.SSLError, OSError):
            break
    t.join(30)
    assert isinstance(out["victim"], AuthenticationFailed), out["victim"]
    assert "Diffie-Hellman group" in str(out["victim"])
    assert _handshake_types(bytes(received)) == [1]    # its ClientHello, no ClientKeyExchange
    b.close()


def test_only_tls_1_2_is_spoken():
    a, b = socket.socketpair()
    out = {}

    def follower():
        out["e"] = _catch(lambda: secure(a, "s", False, FOLLOWER.encode(), LEADER.encode(), b""))
        a.close()
    t = threading.Thread(target=follower)
    t.start()
    b.settimeout(10)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(b).do_handshake()
    t.join(30)
    assert isinstance(out["e"], AuthenticationFailed)


def _catch(call):
    try:
        return call()
    except AuthenticationFailed as exc:
        return exc


def test_the_tls_contexts_never_resume_or_renegotiate():
    for server in (True, False):
        ctx = _context(server)
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_TICKET and ctx.options & ssl.OP_NO_RENEGOTIATION
        tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 == ["ADH-AES128-GCM-SHA256"]      # (the TLS 1.3 ones are never used)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3000))
def test_garbage_in_the_handshake_is_a_clean_failure(garbage):
    a, b = socket.socketpair()
    a.settimeout(5)
    b.sendall(garbage)
    b.close()
    with pytest.raises(AuthenticationFailed):
        secure(a, "s", False, FOLLOWER.encode(), LEADER.encode(), b"")
    a.close()


# -- codes ------------------------------------------------------------------------------
def test_generated_codes_are_three_groups_of_five_fresh_digits():
    codes = {generate_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert re.fullmatch(r"[0-9]{5}-[0-9]{5}-[0-9]{5}", code)
        assert len(normalize_secret(code)) * math.log2(10) >= 40     # bits it can carry
    for position in range(15):       # every digit is drawn: each place takes most values
        assert len({normalize_secret(code)[position] for code in codes}) >= 8
    assert normalize_secret(next(iter(codes))) == next(iter(codes)).replace("-", "")


@pytest.mark.parametrize("typed", [
    "48210-93755-62183", "48210 93755 62183", "482109375562183", " 48210  93755-62183\t",
    "48210\u201393755\u201362183",                # en dashes (autocorrect, chat programs)
    "48210\u00a093755\u202f62183",                # no-break and narrow no-break spaces
    "4-8-2-1-0-9-3-7-5-5-6-2-1-8-3",
])
def test_a_code_is_its_digits_however_it_is_typed(typed):
    assert normalize_secret(typed) == "482109375562183"


@pytest.mark.parametrize("secret", [
    "correct horse battery staple", "4821O-93755-62183",      # a letter O: not a code
    "1234_5678", "+1 555 0100", "---", "  ", "-", "١٢٣-٤٥٦",  # no ASCII digit / other digits
    "abc-123", generate_secret(),
])
def test_anything_that_is_not_a_code_is_used_as_given(secret):
    assert normalize_secret(secret) == secret


def test_a_code_typed_differently_on_each_side_authenticates():
    leader, follower = both_sides("48210-93755-62183", "48210 93755 62183")
    assert isinstance(leader, SecureChannel) and isinstance(follower, SecureChannel)
    leader, follower = both_sides("48210-93755-62183", "48210-93755-62184")
    assert isinstance(leader, AuthenticationFailed) and isinstance(follower, AuthenticationFailed)


def test_a_secret_that_is_not_utf8_from_the_environment_still_works():
    # os.environ hands undecodable bytes over as surrogate escapes.
    secret = b"caf\xe9".decode("utf-8", "surrogateescape")
    leader, follower = both_sides(secret, secret)
    assert isinstance(leader, SecureChannel) and isinstance(follower, SecureChannel)


# -- what an attacker who wins the punch receives ------------------------------------------
def read_until_end(tls) -> bytes:
    got = bytearray()
    while True:
        try:
            data = tls.recv(65536)
        except OSError:
            break
        if not data:
            break
        got += data
    return bytes(got)


def read_exactly(tls, n) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = tls.recv(n - len(got))
        assert data, "the real side ended early"
        got += data
    return bytes(got)


def test_an_attacker_leader_receives_salt_and_b_only():
    # The attacker completes TLS as the leader (the SRP client) against a real
    # follower and answers with a guess: all it ever gets is salt | B.
    a, b = socket.socketpair()
    out = {}

    def follower():
        try:
            out["follower"] = secure(b, "right", False, FOLLOWER.encode(), LEADER.encode(), b"")
        except AuthenticationFailed as exc:
            out["follower"] = exc
            b.close()
    t = threading.Thread(target=follower)
    t.start()
    tls = _context(server=False).wrap_socket(a)
    challenge = read_exactly(tls, srp.CHALLENGE_LEN)
    guess = srp.SrpClient(b"a guess")
    tls.sendall(guess.respond(challenge, tls.get_channel_binding("tls-unique"), HELLOS))
    assert read_until_end(tls) == b""                      # no M2, nothing at all
    t.join(30)
    assert isinstance(out["follower"], AuthenticationFailed)
    assert "does not know the same secret" in str(out["follower"])
    tls.close()


def test_an_attacker_follower_receives_a_and_m1_only_and_cannot_deliver_data():
    # The attacker completes TLS as the follower (the SRP server), sends a
    # challenge built from its own guess, then a made-up M2 and a data frame.
    a, b = socket.socketpair()
    out = {}

    def leader():
        try:
            out["leader"] = secure(a, "right", True, LEADER.encode(), FOLLOWER.encode(), b"")
        except AuthenticationFailed as exc:
            out["leader"] = exc
            a.close()
    t = threading.Thread(target=leader)
    t.start()
    tls = _context(server=True).wrap_socket(b, server_side=True)
    fake = srp.SrpServer(b"a guess")
    tls.sendall(fake.challenge)
    response = read_exactly(tls, srp.RESPONSE_LEN)             # PAD(A) | M1
    tls.sendall(bytes(32) + struct.pack("!I", 5) + b"evil!")   # a wrong M2, then data
    assert read_until_end(tls) == b""                          # nothing after A | M1
    t.join(30)
    assert isinstance(out["leader"], AuthenticationFailed)     # and no channel, no data
    with pytest.raises(AuthenticationFailed):
        fake.verify(response, tls.get_channel_binding("tls-unique"), HELLOS)
    tls.close()


@settings(max_examples=25, deadline=None)
@given(st.booleans(), st.binary(max_size=1000))
def test_garbage_inside_tls_is_a_clean_failure(attack_the_leader, garbage):
    a, b = socket.socketpair()
    mine, theirs = (b, a) if attack_the_leader else (a, b)
    out = {}

    def victim():
        try:
            hellos = (LEADER, FOLLOWER) if attack_the_leader else (FOLLOWER, LEADER)
            out["victim"] = secure(theirs, "s", attack_the_leader, hellos[0].encode(),
                                   hellos[1].encode(), b"")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["victim"] = exc
        theirs.close()
    t = threading.Thread(target=victim)
    t.start()
    tls = _context(server=attack_the_leader).wrap_socket(mine, server_side=attack_the_leader)
    tls.sendall(garbage)
    tls.shutdown(socket.SHUT_WR)
    read_until_end(tls)
    t.join(30)
    assert isinstance(out["victim"], AuthenticationFailed), out["victim"]
    tls.close()


# -- TLS as tls-unique needs it; one deadline -----------------------------------------------
def _tls_peer(sock, server: bool, ems: bool = True):
    ctx = _context(server=server)
    if not ems:
        ctx.options |= 1                 # SSL_OP_NO_EXTENDED_MASTER_SECRET (OpenSSL 3)
    return ctx.wrap_socket(sock, server_side=server, do_handshake_on_connect=False)


@pytest.mark.parametrize("victim_leads", [True, False], ids=["victim leads", "victim follows"])
def test_a_handshake_without_the_extended_master_secret_is_refused(victim_leads):
    a, b = socket.socketpair()
    out = {}

    def victim():
        local, peer = (LEADER, FOLLOWER) if victim_leads else (FOLLOWER, LEADER)
        try:
            out["victim"] = secure(a, "s", victim_leads, local.encode(), peer.encode(), b"")
        except AuthenticationFailed as exc:
            out["victim"] = exc
        a.close()
    t = threading.Thread(target=victim)
    t.start()
    tls = _tls_peer(b, server=victim_leads, ems=False)
    try:
        tls.do_handshake()
        read_until_end(tls)
    except (ssl.SSLError, OSError):
        pass
    t.join(30)
    assert isinstance(out["victim"], AuthenticationFailed), out["victim"]
    assert "extended master secret" in str(out["victim"])
    tls.close()


def test_the_server_hello_scan_finds_the_extension_however_the_bytes_come():
    """A handshake between two SSL objects; the scanner is fed what the
    server sends one byte at a time."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = _context(server=False).wrap_bio(to_client, from_client)
    server = _context(server=True).wrap_bio(to_server, from_server, server_side=True)
    scan = ServerFlightScan()
    for _ in range(5):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        sent = from_server.read()
        for i in range(len(sent)):
            scan.feed(sent[i:i + 1])
        to_client.write(sent)
    assert scan.extensions is not None and EXTENDED_MASTER_SECRET in scan.extensions
    without = ServerFlightScan()
    without.feed(b"\x16\x03\x03\x00\x04\x0e\x00\x00\x00")     # a ServerHelloDone first
    assert without.extensions == frozenset()


def test_no_session_ticket_is_issued():
    leader, follower = both_sides("s", "s")
    assert not leader._obj.session.has_ticket
    assert not leader._obj.session_reused


def test_the_whole_authentication_has_one_deadline_however_slowly_the_peer_sends():
    """One byte every 0.3 s used to restart a per-recv timeout each time."""
    a, b = socket.socketpair()
    hello = bytearray()
    client = _context(server=False).wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO())
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        hello += out.read()
    stop = threading.Event()

    def trickle():
        for byte in hello:
            if stop.wait(0.3):
                return
            try:
                b.send(bytes([byte]))
            except OSError:
                return
    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="did not complete it within 1.5 s"):
        secure(a, "s", False, FOLLOWER.encode(), LEADER.encode(), b"", timeout=1.5)
    assert time.monotonic() - started < 2.5
    stop.set()
    a.close()
    b.close()


# -- secret files --------------------------------------------------------------------------
def test_secret_files_are_read_like_ssh_keys(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"  caf\xe9 secret \nsecond line\n")
    path.chmod(0o600)
    assert read_secret_file(str(path)) == b"caf\xe9 secret".decode("utf-8", "surrogateescape")
    path.chmod(0o640)
    with pytest.raises(PunchcatError, match="mode 0640"):
        read_secret_file(str(path))
    assert read_secret_file(str(path), insecure=True).startswith("caf")


def test_a_written_secret_file_is_private_and_never_replaced(tmp_path):
    path = tmp_path / "s"
    old = os.umask(0)
    try:
        write_secret_file(str(path), "fresh")
    finally:
        os.umask(old)
    assert path.read_text() == "fresh\n" and (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(PunchcatError, match="exists"):
        write_secret_file(str(path), "other")
    assert path.read_text() == "fresh\n"
