"""SRP-6a (punchcat.srp): RFC 5054's vectors, the exchange, and what an attacker gets."""

import datetime
import decimal

import pytest
from hypothesis import given, settings, strategies as st

from punchcat import srp
from punchcat.errors import AuthenticationFailed, LocalProtocolError
from punchcat.srp import (CHALLENGE_LEN, CONFIRMATION_LEN, GROUP_1024, GROUP_3072, PROOF_LEN,
                          RESPONSE_LEN, SALT_LEN, SRP, SRP_RFC5054_VECTORS, SrpClient, SrpServer)


def h(text: str) -> int:
    return int("".join(text.split()), 16)


# RFC 5054 Appendix B, every value it gives (1024-bit group, SHA-1).
I, P = b"alice", b"password123"
s = bytes.fromhex("BEB25379 D1A8581E B5A72767 3A2441EE")
k = h("7556AA04 5AEF2CDD 07ABAF0F 665C3E81 8913186F")
x = h("94B7555A ABE9127C C58CCF49 93DB6CF8 4D16C124")
v = h("""7E273DE8 696FFC4F 4E337D05 B4B375BE B0DDE156 9E8FA00A 9886D812
         9BADA1F1 822223CA 1A605B53 0E379BA4 729FDC59 F105B478 7E5186F5
         C671085A 1447B52A 48CF1970 B4FB6F84 00BBF4CE BFBB1681 52E08AB5
         EA53D15C 1AFF87B2 B9DA6E04 E058AD51 CC72BFC9 033B564E 26480D78
         E955A5E2 9E7AB245 DB2BE315 E2099AFB""")
a = h("60975527 035CF2AD 1989806F 0407210B C81EDC04 E2762A56 AFD529DD DA2D4393")
b = h("E487CB59 D31AC550 471E81F0 0F6928E0 1DDA08E9 74A004F4 9E61F5D1 05284D20")
A = h("""61D5E490 F6F1B795 47B0704C 436F523D D0E560F0 C64115BB 72557EC4
         4352E890 3211C046 92272D8B 2D1A5358 A2CF1B6E 0BFCF99F 921530EC
         8E393561 79EAE45E 42BA92AE ACED8251 71E1E8B9 AF6D9C03 E1327F44
         BE087EF0 6530E69F 66615261 EEF54073 CA11CF58 58F0EDFD FE15EFEA
         B349EF5D 76988A36 72FAC47B 0769447B""")
B = h("""BD0C6151 2C692C0C B6D041FA 01BB152D 4916A1E7 7AF46AE1 05393011
         BAF38964 DC46A067 0DD125B9 5A981652 236F99D9 B681CBF8 7837EC99
         6C6DA044 53728610 D0C6DDB5 8B318885 D7D82C7F 8DEB75CE 7BD4FBAA
         37089E6F 9C6059F3 88838E7A 00030B33 1EB76840 910440B1 B27AAEAE
         EB4012B7 D7665238 A8E3FB00 4B117B58""")
u = h("CE38B959 3487DA98 554ED47D 70A7AE5F 462EF019")
S = h("""B0DC82BA BCF30674 AE450C02 87745E79 90A3381F 63B387AA F271A10D
         233861E3 59B48220 F7C4693C 9AE12B0A 6F67809F 0876E2D0 13800D6C
         41BB59B6 D5979B5C 00A172B4 A2A5903A 0BDCAF8A 709585EB 2AFAFA8F
         3499B200 210DCC1F 10EB3394 3CD67FC8 8A2F39A4 BE5BEC4E C0A3212D
         C346D7E4 74B29EDE 8A469FFE CA686E5A""")

V = SRP_RFC5054_VECTORS
BINDING, HELLOS = b"tls-unique of this session", b"leader hello|follower hello"


def run(server: SrpServer, client: SrpClient) -> None:
    """The whole exchange; raises where it fails."""
    response = client.respond(server.challenge, BINDING, HELLOS)
    client.confirm(server.verify(response, BINDING, HELLOS))


def test_rfc5054_appendix_b_vectors():
    assert V.group.N.bit_length() == 1024 and V.group.g == 2
    assert V.k == k
    assert V.x(s, I, P) == x
    assert V.verifier(x) == v
    assert V.client_public(a) == A
    assert V.server_public(v, b) == B
    assert V.scrambler(A, B) == u
    assert V.client_premaster(B, x, a, u) == S
    assert V.server_premaster(A, v, u, b) == S


def test_the_state_machines_reproduce_the_vectors():
    server = SrpServer(P, srp=V, identity=I, salt=s, b=b)
    client = SrpClient(P, srp=V, identity=I, a=a)
    assert server.challenge == s + B.to_bytes(128, "big")
    response = client.respond(server.challenge, BINDING, HELLOS)
    assert response[:128] == A.to_bytes(128, "big")
    client.confirm(server.verify(response, BINDING, HELLOS))
    assert client.key == server.key == srp._proofs(V, S, I, BINDING, HELLOS, s, A, B)[0]


def test_the_3072_bit_group_is_rfc_3526s_prime_with_generator_5():
    # RFC 5054 Appendix A's 3072-bit N is RFC 3526's MODP prime:
    # 2^3072 - 2^3008 - 1 + 2^64 * (floor(2^2942 * pi) + 1690314).
    decimal.getcontext().prec = 1000

    def arctan_inverse(n):                     # Machin: pi = 16 atan(1/5) - 4 atan(1/239)
        term = total = decimal.Decimal(1) / n
        i, eps = 1, decimal.Decimal(10) ** -995
        while term > eps:
            term /= n * n
            total += (-1) ** i * term / (2 * i + 1)
            i += 1
        return total
    pi = 16 * arctan_inverse(5) - 4 * arctan_inverse(239)
    N = 2 ** 3072 - 2 ** 3008 - 1 + 2 ** 64 * (int(decimal.Decimal(2) ** 2942 * pi) + 1690314)
    assert GROUP_3072.N == N and GROUP_3072.g == 5 and GROUP_3072.size == 384
    # 5 generates the whole group of order N - 1 = 2q (N is a safe prime).
    assert pow(5, (N - 1) // 2, N) == N - 1
    assert SRP.hash_name == "sha256" and GROUP_1024.size == 128


def test_message_lengths():
    assert (CHALLENGE_LEN, RESPONSE_LEN, CONFIRMATION_LEN) == (400, 416, 32)
    server = SrpServer(b"secret")
    client = SrpClient(b"secret")
    assert client.expect == len(server.challenge) == CHALLENGE_LEN
    response = client.respond(server.challenge, BINDING, HELLOS)
    assert server.expect == len(response) == RESPONSE_LEN
    m2 = server.verify(response, BINDING, HELLOS)
    assert client.expect == len(m2) == CONFIRMATION_LEN
    client.confirm(m2)
    assert client.expect is None and server.expect is None


@pytest.mark.parametrize("suite", [SRP, SRP_RFC5054_VECTORS], ids=["3072-sha256", "1024-sha1"])
def test_round_trip_gives_both_sides_the_same_key(suite):
    server = SrpServer(b"correct horse", srp=suite)
    client = SrpClient(b"correct horse", srp=suite)
    run(server, client)
    assert client.key == server.key and len(client.key) == 32


def test_every_run_is_fresh():
    one, two = SrpServer(b"s"), SrpServer(b"s")
    assert one.challenge[:SALT_LEN] != two.challenge[:SALT_LEN]      # fresh salt, fresh v
    assert one.challenge[SALT_LEN:] != two.challenge[SALT_LEN:]
    assert SrpClient(b"s")._A != SrpClient(b"s")._A
    assert srp.random_exponent().bit_length() == srp.EXPONENT_BITS + 1


def lying_server_m2(server: SrpServer, response: bytes) -> bytes:
    """The M2 a server would send if it skipped the check of M1 (a bug or
    an attacker with its own password): computed from its own S."""
    A_ = int.from_bytes(response[:384], "big")
    u_ = SRP.scrambler(A_, server._B)
    S_ = SRP.server_premaster(A_, server._v, u_, server._b)
    return srp._proofs(SRP, S_, srp.IDENTITY, BINDING, HELLOS, server._salt, A_, server._B)[2]


def test_wrong_password_fails_on_both_sides():
    server = SrpServer(b"right")
    client = SrpClient(b"wrong")
    response = client.respond(server.challenge, BINDING, HELLOS)
    with pytest.raises(AuthenticationFailed, match="does not know the same secret"):
        server.verify(response, BINDING, HELLOS)
    assert server.key is None
    # Had the server answered anyway, the client would not accept it either.
    with pytest.raises(AuthenticationFailed, match="does not know the same secret"):
        client.confirm(lying_server_m2(server, response))
    assert client.key is None


@pytest.mark.parametrize("field", ["binding", "hellos"])
def test_proofs_are_bound_to_the_tls_session_and_the_hellos(field):
    # A man in the middle has two TLS sessions (two tls-unique values); a
    # tampered hello changes the hellos: either way M1 no longer verifies.
    other = {"binding": (b"another session", HELLOS), "hellos": (BINDING, b"tampered hellos")}
    server = SrpServer(b"s")
    client = SrpClient(b"s")
    with pytest.raises(AuthenticationFailed):
        server.verify(client.respond(server.challenge, BINDING, HELLOS), *other[field])


def test_a_client_without_the_password_gets_salt_and_B_and_nothing_more():
    salt, b_ = bytes(range(16)), srp.random_exponent()
    server = SrpServer(b"right", salt=salt, b=b_)
    v_ = SRP.verifier(SRP.x(salt, srp.IDENTITY, b"right"))
    # All it is sent: salt | PAD(B), B = k*v + g^b, blinded by the fresh g^b.
    B_ = (SRP.k * v_ + pow(5, b_, GROUP_3072.N)) % GROUP_3072.N
    assert server.challenge == salt + SRP.pad(B_)
    attacker = SrpClient(b"a guess")
    with pytest.raises(AuthenticationFailed):
        run(server, attacker)                      # no M2: nothing is returned
    with pytest.raises(LocalProtocolError):
        run(server, SrpClient(b"another guess"))   # and no second try on this run


def test_a_server_without_the_password_gets_A_and_M1_and_can_test_one_guess():
    # The attacker plays the server: it must send B before it sees A, so it
    # builds B = k*v' + g^b' from the verifier v' of one guess, with b' known.
    # The client answers PAD(A) | M1 and nothing more (M2 never comes).
    #
    # Why M1 allows no offline test of any other guess P'': M1 is a MAC under
    # K = H(S), and S for P'' is (B - k*v'')^(a + u*x'') on the client's
    # side, which needs a (A's secret exponent), or (A * v''^u)^b'' on the
    # server's side, which needs b'' with g^b'' = B - k*v''.  The attacker
    # knows such an exponent only for v'' = v', the guess B was made from:
    # for any other guess, B - k*v'' is an element whose discrete logarithm
    # it does not know (choosing B to know two of them at once would mean
    # solving k*(v' - v'') = g^b' - g^b'' for its b' and b'', a discrete-log
    # problem; that is what SRP-6a's k = H(N | PAD(g)) is for).  So each run
    # with the real client tests exactly one guess, online, and fails
    # visibly when the guess is wrong.
    guess = b"1234"
    for real, verified in ((b"correct horse", False), (guess, True)):
        attacker = SrpServer(guess)
        client = SrpClient(real)
        response = client.respond(attacker.challenge, BINDING, HELLOS)
        assert len(response) == RESPONSE_LEN == 384 + PROOF_LEN
        assert response[:384] == SRP.pad(client._A)                   # PAD(A) | M1 and no more
        if verified:
            client.confirm(attacker.verify(response, BINDING, HELLOS))  # its one guess, if right
        else:
            with pytest.raises(AuthenticationFailed):
                attacker.verify(response, BINDING, HELLOS)
            with pytest.raises(AuthenticationFailed):
                client.confirm(bytes(32))                             # it cannot make M2


N3 = GROUP_3072.N


@pytest.mark.parametrize("bad", [0, N3, 2 * N3, 5 * N3, -1, N3 + 1])
def test_a_and_b_that_are_zero_mod_n_or_out_of_range_are_rejected(bad):
    with pytest.raises(AuthenticationFailed, match="out of range"):
        SRP.server_premaster(bad, 7, 1, 3)
    with pytest.raises(AuthenticationFailed, match="out of range"):
        SRP.client_premaster(bad, 7, 3, 1)


def test_u_zero_is_rejected():
    with pytest.raises(AuthenticationFailed, match="u is 0"):
        SRP.server_premaster(2, 7, 0, 3)
    with pytest.raises(AuthenticationFailed, match="u is 0"):
        SRP.client_premaster(2, 7, 3, 0)


# On the wire A and B are exactly 384 bytes, so 2N and above cannot even be
# written; 0, N and everything from N to 2^3072 - 1 can, and are rejected.
WIRE_BAD = [0, N3, N3 + 1, 2 ** 3072 - 1]


@pytest.mark.parametrize("bad", WIRE_BAD, ids=["0", "N", "N+1", "max"])
def test_bad_a_on_the_wire_is_rejected_before_any_proof(bad):
    with pytest.raises(OverflowError):
        SRP.pad(2 * N3)
    server = SrpServer(b"s")
    with pytest.raises(AuthenticationFailed, match="A out of range"):
        server.verify(SRP.pad(bad) + bytes(32), BINDING, HELLOS)


@pytest.mark.parametrize("bad", WIRE_BAD, ids=["0", "N", "N+1", "max"])
def test_bad_b_on_the_wire_is_rejected(bad):
    client = SrpClient(b"s")
    with pytest.raises(AuthenticationFailed, match="B out of range"):
        client.respond(bytes(16) + SRP.pad(bad), BINDING, HELLOS)
    assert client.expect is None                                     # dead: no retry


def test_steps_out_of_order_are_a_local_error():
    client = SrpClient(b"s")
    with pytest.raises(LocalProtocolError):
        client.confirm(bytes(32))
    server = SrpServer(b"s")
    run(server, client)
    with pytest.raises(LocalProtocolError):
        client.respond(server.challenge, BINDING, HELLOS)
    with pytest.raises(LocalProtocolError):
        client.confirm(bytes(32))


# -- garbage: always AuthenticationFailed, never another exception or a hang ---------
FUZZ = settings(max_examples=60, deadline=datetime.timedelta(seconds=5))


def mangle(data: bytes, how, where: int, junk: bytes) -> bytes:
    where %= len(data) + 1
    if how == "truncate":
        return data[:where]
    if how == "extend":
        return data + (junk or b"\0")
    if how == "flip":
        where %= len(data)
        mask = junk[0] if junk and junk[0] else 1
        return data[:where] + bytes([data[where] ^ mask]) + data[where + 1:]
    return junk                                          # "replace": pure garbage


MANGLING = dict(how=st.sampled_from(["truncate", "extend", "flip", "replace"]),
                where=st.integers(min_value=0, max_value=10_000), junk=st.binary(max_size=1000))


@FUZZ
@given(**MANGLING)
def test_garbage_to_the_server_fails_cleanly(how, where, junk):
    server = SrpServer(b"s")
    real = SrpClient(b"s").respond(server.challenge, BINDING, HELLOS)
    garbled = mangle(real, how, where, junk)
    if garbled == real:
        return                                           # cut at the very end: nothing cut
    with pytest.raises(AuthenticationFailed):
        server.verify(garbled, BINDING, HELLOS)


@FUZZ
@given(**MANGLING)
def test_garbage_challenge_to_the_client_fails_cleanly(how, where, junk):
    challenge = SrpServer(b"s").challenge
    garbled = mangle(challenge, how, where, junk)
    client = SrpClient(b"s")
    try:
        response = client.respond(garbled, BINDING, HELLOS)
    except AuthenticationFailed:
        return
    # A flipped byte of the salt (or of B, still below N) is a well-formed
    # challenge: the client answers, but the exchange cannot succeed.
    assert len(garbled) == CHALLENGE_LEN and len(response) == RESPONSE_LEN
    with pytest.raises(AuthenticationFailed):
        client.confirm(bytes(32))


@FUZZ
@given(**MANGLING)
def test_garbage_confirmation_to_the_client_fails_cleanly(how, where, junk):
    server = SrpServer(b"s")
    client = SrpClient(b"s")
    m2 = server.verify(client.respond(server.challenge, BINDING, HELLOS), BINDING, HELLOS)
    garbled = mangle(m2, how, where, junk)
    if garbled == m2:
        return
    with pytest.raises(AuthenticationFailed):
        client.confirm(garbled)
