"""A new link proves it continues the same stream: the resume key and its proofs.

Every stream has a *resume key*, known to its two ends only:

* with a secret, derived from the SRP session key of the first link and
  that link's TLS channel binding (:func:`key_from_srp`): nobody who did
  not complete SRP with the secret has it;
* without one, made on the first link from 32 random bytes each side sends
  in a KEY record (:func:`key_from_plain`): whoever saw that link's
  plaintext could take it, which is no worse than an unauthenticated link
  already is.

A side that punches again to continue the stream names it in its hello by
:func:`stream_id` (a hash of the key, which tells nothing about it), so
that it meets only the peer continuing the same stream.  On the new link
the leader sends ``HMAC(key, "leader" | binding | hellos)``; the follower
checks it and only then sends its own, which the leader checks
(:class:`Prover`).  *binding* is the new link's TLS channel binding (empty
on a plain link), and the hellos carry both sides' fresh random side ids,
so no proof can be replayed or relayed.  The key is 256 bits from a hash:
there is nothing to guess, and no exponentiation to pay for.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import time

from .errors import AuthenticationFailed

KEY_LEN = 32
PROOF_LEN = 32
#: What the KEY records carry on a link without a secret.
MATERIAL_LEN = 32
_LABEL = b"punchcat resume key\0"


def key_from_srp(session_key: bytes, binding: bytes) -> bytes:
    return hmac.new(session_key, _LABEL + binding, hashlib.sha256).digest()


def key_from_plain(leader_material: bytes, follower_material: bytes, hellos: bytes) -> bytes:
    return hashlib.sha256(_LABEL + leader_material + follower_material + hellos).digest()


def stream_id(key: bytes) -> bytes:
    """The 8 bytes that name the stream in a resuming side's hello."""
    return hashlib.sha256(b"punchcat stream id\0" + key).digest()[:8]


def proof(key: bytes, role: bytes, binding: bytes, hellos: bytes) -> bytes:
    return hmac.new(key, role + b"\0" + binding + hellos, hashlib.sha256).digest()


class Prover:
    """Both sides' proofs of the resume key on a new link, as SRP's side
    objects do them (:mod:`punchcat.secure` runs either)."""

    def __init__(self, key: bytes, leader: bool):
        self._key = key
        self.leader = leader
        self.expect = PROOF_LEN          # bytes of the next message from the peer
        self._claimed: tuple[bytes, bytes] | None = None

    def claim(self, binding: bytes, hellos: bytes) -> bytes:
        """Leader: its proof."""
        self._claimed = (binding, hellos)
        return proof(self._key, b"leader", binding, hellos)

    def verify(self, leader_proof: bytes, binding: bytes, hellos: bytes) -> bytes:
        """Follower: check the leader's proof; its own in return."""
        if not hmac.compare_digest(leader_proof, proof(self._key, b"leader", binding, hellos)):
            raise _not_this_stream()
        return proof(self._key, b"follower", binding, hellos)

    def confirm(self, follower_proof: bytes) -> None:
        """Leader: check the follower's proof."""
        binding, hellos = self._claimed
        if not hmac.compare_digest(follower_proof,
                                   proof(self._key, b"follower", binding, hellos)):
            raise _not_this_stream()


def _not_this_stream() -> AuthenticationFailed:
    return AuthenticationFailed("authentication failed: the new link could not prove that it "
                                "continues this stream")


def prove_plain(sock: socket.socket, key: bytes, leader: bool, local_hello: bytes,
                peer_hello: bytes, leftover: bytes, timeout: float) -> bytes:
    """The proofs on a plain link (blocking, one deadline); returns what
    came after the peer's proof (the start of its records)."""
    prover = Prover(key, leader)
    hellos = local_hello + peer_hello if leader else peer_hello + local_hello
    deadline = time.monotonic() + timeout
    got = bytearray(leftover)

    def receive(n: int) -> bytes:
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AuthenticationFailed(f"authentication failed: the peer did not prove "
                                           f"the stream within {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError as exc:
                raise AuthenticationFailed(f"authentication failed: {exc.strerror or exc}") \
                    from None
            if not chunk:
                raise AuthenticationFailed("authentication failed: the peer closed the new "
                                           "link before proving the stream")
            got.extend(chunk)
        message = bytes(got[:n])
        del got[:n]
        return message

    def send(data: bytes) -> None:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.sendall(data)
        except OSError as exc:
            raise AuthenticationFailed(f"authentication failed: {exc.strerror or exc}") from None

    try:
        if leader:
            send(prover.claim(b"", hellos))
            prover.confirm(receive(PROOF_LEN))
        else:
            send(prover.verify(receive(PROOF_LEN), b"", hellos))
    finally:
        sock.settimeout(None)
    return bytes(got)
