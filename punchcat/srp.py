"""SRP-6a: the shared secret is proven without ever being testable offline.

Sans-IO: nothing here touches a socket.  :class:`Srp` holds the computations
of RFC 5054 (SRP-6a of RFC 2945 with the groups of RFC 5054 Appendix A and
its exact formulas), :class:`SrpClient` and :class:`SrpServer` are the two
sides of punchcat's exchange, which runs inside the TLS channel of
:mod:`punchcat.secure` (the punchcat leader is the SRP client, the follower
the SRP server).

The computations (RFC 5054 sections 2.4-2.6; ``|`` is concatenation,
``PAD(n)`` is *n* big-endian, left-padded with zeros to the length of N)::

    k = H(N | PAD(g))                 x = H(s | H(I | ":" | P))
    v = g^x % N                       A = g^a % N
    B = (k*v + g^b) % N               u = H(PAD(A) | PAD(B))
    client:  S = (B - k*g^x) ^ (a + u*x) % N
    server:  S = (A * v^u) ^ b % N

Every received group element is checked: ``0 < A < N`` and ``0 < B < N``
(which include RFC 5054's ``A % N != 0`` and ``B % N != 0``), and ``u != 0``.
The secret exponents a and b have 256 random bits from :mod:`secrets` (plus
a leading one bit, so they are never small), as RFC 5054 asks.

The exchange
------------
The SRP server draws a fresh 16-byte salt on every run and derives the
verifier ``v`` from the secret there and then; the identity ``I`` is the
fixed label ``b"punchcat"``.  With the 3072-bit group and SHA-256 (what
punchcat uses) the messages have fixed lengths::

    server -> client   salt (16) | PAD(B) (384)      CHALLENGE_LEN    = 400
    client -> server   PAD(A) (384) | M1 (32)         RESPONSE_LEN     = 416
    server -> client   M2 (32)                        CONFIRMATION_LEN = 32

The server checks M1 and sends M2 only if it is right; the client checks
M2.  With ``S`` from above (the same on both sides when both know the
secret)::

    K  = SHA-256("punchcat srp-6a v2 key" | PAD(S))
    T  = each of "punchcat srp-6a v2", group name, hash name, I, binding,
         hellos, salt, PAD(A), PAD(B), prefixed by its length (4 bytes)
    M1 = HMAC-SHA256(K, "client" | T)
    M2 = HMAC-SHA256(K, "server" | T)

*binding* is the TLS channel binding (tls-unique) and *hellos* both punchcat
hellos, leader's first: a proof made for one TLS session means nothing in
another (a man in the middle has two), and the proofs cover the modes and
flags that travelled in the clear.  Sending B before A is the order of RFC
5054's own TLS handshake: SRP-6a's ``u = H(A | B)`` is what makes it safe
(the client cannot choose A knowing u).

What each side learns without the secret
----------------------------------------
* A client that does not know the secret receives ``salt | B`` and nothing
  more (M2 comes only after a right M1).  In ``B = k*v + g^b`` the term
  ``g^b``, with a fresh secret b, masks ``k*v``: without b, B cannot be
  told from a random number below N whatever v is, so it says nothing
  about the secret (the standard SRP argument).  The client can try one
  guess, by sending the M1 of that guess, per run of the real server.
* A server that does not know the secret receives ``A | M1``.  To test a
  guess P' against M1 it needs that guess's S, i.e. ``(B - k*v')^(a+u*x')``
  (but a is the client's secret) or ``(A * v'^u)^b'`` where ``g^b' = B -
  k*v'``.  It knows such a b' for at most the one v' it built B from: for any
  other guess that needs a discrete logarithm.  So again one guess per run.
* Neither learns anything else: every failure raises the same exception,
  and all the peer sees of it is the connection closing.

Key derivation: no scrypt, on purpose
-------------------------------------
``x`` is one hash of the secret, not a slow key-derivation function.  A slow
hash only matters against *offline* guessing (someone holding a verifier or
a transcript who can try guesses at their own pace).  Here the verifier is
made fresh from a fresh salt on every run, lives in memory for one exchange
and is never stored or sent, and no message lets anyone test a guess
without running the protocol again with the real peer.  So the secret may
be a short code a person reads out (``secret.generate_code``): its strength
is the number of runs an attacker would need, not hashes per second.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .errors import AuthenticationFailed, LocalProtocolError


def _hex(text: str) -> int:
    return int("".join(text.split()), 16)


@dataclass(frozen=True)
class Group:
    """A group of RFC 5054 Appendix A: a safe prime N and a generator g."""

    name: str
    N: int
    g: int

    @property
    def size(self) -> int:
        """Length of N in bytes: what PAD() pads to."""
        return (self.N.bit_length() + 7) // 8


#: RFC 5054 Appendix A, 1024-bit group: only for the test vectors of Appendix B.
GROUP_1024 = Group("rfc5054-1024", _hex("""
    EEAF0AB9 ADB38DD6 9C33F80A FA8FC5E8 60726187 75FF3C0B 9EA2314C
    9C256576 D674DF74 96EA81D3 383B4813 D692C6E0 E0D5D8E2 50B98BE4
    8E495C1D 6089DAD1 5DC7D7B4 6154D6B6 CE8EF4AD 69B15D49 82559B29
    7BCF1885 C529F566 660E57EC 68EDBC3C 05726CC0 2FD4CBF4 976EAA9A
    FD5138FE 8376435B 9FC61D2F C0EB06E3"""), 2)

#: RFC 5054 Appendix A, 3072-bit group (N is RFC 3526's 3072-bit MODP prime,
#: 2^3072 - 2^3008 - 1 + 2^64 * (floor(2^2942 * pi) + 1690314)): in use.
GROUP_3072 = Group("rfc5054-3072", _hex("""
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08
    8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B
    302B0A6D F25F1437 4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9
    A637ED6B 0BFF5CB6 F406B7ED EE386BFB 5A899FA5 AE9F2411 7C4B1FE6
    49286651 ECE45B3D C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8
    FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B E39E772C
    180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718
    3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D
    04507A33 A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D
    B3970F85 A6E1E4C7 ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226
    1AD2EE6B F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
    BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31 43DB5BFC
    E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF"""), 5)


@dataclass(frozen=True)
class Srp:
    """The SRP-6a computations of RFC 5054 over one group with one hash
    (a :mod:`hashlib` name).  Integers in, integers out; received values are
    checked where they are used, failing with :class:`AuthenticationFailed`."""

    group: Group
    hash_name: str

    def H(self, *parts: bytes) -> bytes:
        h = hashlib.new(self.hash_name)
        for part in parts:
            h.update(part)
        return h.digest()

    def _int(self, *parts: bytes) -> int:
        return int.from_bytes(self.H(*parts), "big")

    def pad(self, n: int) -> bytes:
        """PAD(n): big-endian, as long as N."""
        return n.to_bytes(self.group.size, "big")

    @functools.cached_property
    def k(self) -> int:
        """k = H(N | PAD(g))."""
        return self._int(self.pad(self.group.N), self.pad(self.group.g))

    def x(self, salt: bytes, identity: bytes, password: bytes) -> int:
        """x = H(s | H(I | ":" | P))."""
        return self._int(salt, self.H(identity, b":", password))

    def verifier(self, x: int) -> int:
        """v = g^x % N."""
        return pow(self.group.g, x, self.group.N)

    def client_public(self, a: int) -> int:
        """A = g^a % N."""
        return pow(self.group.g, a, self.group.N)

    def server_public(self, v: int, b: int) -> int:
        """B = (k*v + g^b) % N."""
        return (self.k * v + pow(self.group.g, b, self.group.N)) % self.group.N

    def scrambler(self, A: int, B: int) -> int:
        """u = H(PAD(A) | PAD(B))."""
        return self._int(self.pad(A), self.pad(B))

    def check(self, value: int, name: str) -> int:
        """*value* if it is a group element a peer may send: ``0 < value < N``
        (so also ``value % N != 0``, RFC 5054 section 2.5.4)."""
        if not 0 < value < self.group.N or value % self.group.N == 0:
            raise AuthenticationFailed(f"authentication failed: the peer sent an invalid "
                                       f"SRP value ({name} out of range)")
        return value

    def decode(self, data: bytes, name: str) -> int:
        """A group element received as PAD(value), checked."""
        if len(data) != self.group.size:
            raise AuthenticationFailed(f"authentication failed: the peer's SRP value {name} "
                                       f"has the wrong length")
        return self.check(int.from_bytes(data, "big"), name)

    def _check_u(self, u: int) -> None:
        if u == 0:
            raise AuthenticationFailed("authentication failed: SRP scrambling parameter u is 0")

    def client_premaster(self, B: int, x: int, a: int, u: int) -> int:
        """The client's S = (B - k*g^x) ^ (a + u*x) % N; B and u checked."""
        N = self.group.N
        self.check(B, "B")
        self._check_u(u)
        base = (B - self.k * pow(self.group.g, x, N)) % N
        return pow(base, a + u * x, N)

    def server_premaster(self, A: int, v: int, u: int, b: int) -> int:
        """The server's S = (A * v^u) ^ b % N; A and u checked."""
        N = self.group.N
        self.check(A, "A")
        self._check_u(u)
        return pow(A * pow(v, u, N) % N, b, N)


#: What punchcat uses: the 3072-bit group with SHA-256.
SRP = Srp(GROUP_3072, "sha256")
#: What RFC 5054 Appendix B's test vectors use: the 1024-bit group with SHA-1.
SRP_RFC5054_VECTORS = Srp(GROUP_1024, "sha1")

IDENTITY = b"punchcat"
SALT_LEN = 16
PROOF_LEN = 32
EXPONENT_BITS = 256
LABEL = b"punchcat srp-6a v2"

CHALLENGE_LEN = SALT_LEN + SRP.group.size          # 400
RESPONSE_LEN = SRP.group.size + PROOF_LEN          # 416
CONFIRMATION_LEN = PROOF_LEN                       # 32


def random_exponent() -> int:
    """A secret exponent: 256 random bits under a leading one bit."""
    return (1 << EXPONENT_BITS) | secrets.randbits(EXPONENT_BITS)


def _proofs(srp: Srp, S: int, identity: bytes, binding: bytes, hellos: bytes, salt: bytes,
            A: int, B: int) -> tuple[bytes, bytes, bytes]:
    """K, M1 and M2 (see the module docstring)."""
    key = hashlib.sha256(LABEL + b" key" + srp.pad(S)).digest()
    fields = (LABEL, srp.group.name.encode(), srp.hash_name.encode(), identity, binding, hellos,
              salt, srp.pad(A), srp.pad(B))
    transcript = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    m1 = hmac.new(key, b"client" + transcript, hashlib.sha256).digest()
    m2 = hmac.new(key, b"server" + transcript, hashlib.sha256).digest()
    return key, m1, m2


def _length(data: bytes, expected: int, what: str) -> bytes:
    data = bytes(memoryview(data))
    if len(data) != expected:
        raise AuthenticationFailed(f"authentication failed: the peer's {what} has "
                                   f"{len(data)} bytes, not {expected}")
    return data


def _wrong_secret() -> AuthenticationFailed:
    return AuthenticationFailed("authentication failed: the peer does not know the same secret")


class SrpServer:
    """The SRP server's side (punchcat's follower).

    Send :attr:`challenge`; read :attr:`expect` bytes and pass them to
    :meth:`verify`, which returns M2 to send.  Any wrong length, value out of
    range or wrong proof raises :class:`AuthenticationFailed`; then nothing
    more may be sent.  Each step may be taken once.

    The challenge depends on nothing of the connection, so it can be made
    while the TLS handshake waits for the network; the channel binding and
    hellos the proofs are bound to come with the client's response.
    """

    def __init__(self, password: bytes, *, srp: Srp = SRP, identity: bytes = IDENTITY,
                 salt: bytes | None = None, b: int | None = None):
        self.srp = srp
        self._salt = secrets.token_bytes(SALT_LEN) if salt is None else bytes(salt)
        if len(self._salt) != SALT_LEN:
            raise ValueError(f"the salt must be {SALT_LEN} bytes")
        self._identity = identity
        self._v = srp.verifier(srp.x(self._salt, identity, password))
        self._b = random_exponent() if b is None else b
        self._B = srp.server_public(self._v, self._b)
        #: The first message: ``salt | PAD(B)``.
        self.challenge = self._salt + srp.pad(self._B)
        #: Length of the message awaited next, None when the exchange is over.
        self.expect: int | None = srp.group.size + PROOF_LEN
        #: K, once the client has proven the secret.
        self.key: bytes | None = None

    def verify(self, response: bytes, binding: bytes, hellos: bytes) -> bytes:
        """Check ``PAD(A) | M1`` made for this *binding* and these *hellos*;
        return M2 (to send) if it is right."""
        if self.expect is None:
            raise LocalProtocolError("the SRP server has already taken the client's response")
        size = self.srp.group.size
        expected, self.expect = self.expect, None      # one attempt, even if it fails
        response = _length(response, expected, "SRP response")
        A = self.srp.decode(response[:size], "A")
        u = self.srp.scrambler(A, self._B)
        S = self.srp.server_premaster(A, self._v, u, self._b)
        key, m1, m2 = _proofs(self.srp, S, self._identity, bytes(binding), bytes(hellos),
                              self._salt, A, self._B)
        if not hmac.compare_digest(response[size:], m1):
            raise _wrong_secret()
        self.key = key
        return m2


class SrpClient:
    """The SRP client's side (punchcat's leader).

    Read :attr:`expect` bytes (the challenge) and pass them to
    :meth:`respond`, which returns ``PAD(A) | M1`` to send; read
    :attr:`expect` bytes again (M2) and pass them to :meth:`confirm`.  Any
    wrong length, value out of range or wrong proof raises
    :class:`AuthenticationFailed`.  Each step may be taken once.

    A is made at once, so that it can be computed while the TLS handshake
    waits for the network.
    """

    def __init__(self, password: bytes, *, srp: Srp = SRP, identity: bytes = IDENTITY,
                 a: int | None = None):
        self.srp = srp
        self._password, self._identity = bytes(password), identity
        self._a = random_exponent() if a is None else a
        self._A = srp.client_public(self._a)
        self._m2: bytes | None = None
        self._key: bytes | None = None
        #: Length of the message awaited next, None when the exchange is over.
        self.expect: int | None = SALT_LEN + srp.group.size
        #: K, once the server has proven the secret.
        self.key: bytes | None = None

    def respond(self, challenge: bytes, binding: bytes, hellos: bytes) -> bytes:
        """Take ``salt | PAD(B)``; return ``PAD(A) | M1``, M1 bound to this
        *binding* and these *hellos*."""
        if self.expect is None or self._m2 is not None:
            raise LocalProtocolError("the SRP client has already answered a challenge")
        expected, self.expect = self.expect, None      # one attempt, even if it fails
        challenge = _length(challenge, expected, "SRP challenge")
        salt = challenge[:SALT_LEN]
        B = self.srp.decode(challenge[SALT_LEN:], "B")
        u = self.srp.scrambler(self._A, B)
        x = self.srp.x(salt, self._identity, self._password)
        S = self.srp.client_premaster(B, x, self._a, u)
        self._key, m1, self._m2 = _proofs(self.srp, S, self._identity, bytes(binding),
                                          bytes(hellos), salt, self._A, B)
        self.expect = PROOF_LEN
        return self.srp.pad(self._A) + m1

    def confirm(self, confirmation: bytes) -> None:
        """Check M2: afterwards both sides know the other holds the secret."""
        if self.expect is None or self._m2 is None:
            raise LocalProtocolError("the SRP client expects no confirmation now")
        expected, self.expect = self.expect, None
        confirmation = _length(confirmation, expected, "SRP confirmation")
        if not hmac.compare_digest(confirmation, self._m2):
            raise _wrong_secret()
        self.key = self._key
