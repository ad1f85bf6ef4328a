"""A shared secret: mutual authentication and an encrypted link, standard library only.

Construction (see also the README's design note)
------------------------------------------------
1. *Record layer.*  The agreed connection is wrapped in TLS 1.2 by the
   standard library (OpenSSL) with the anonymous Diffie-Hellman suite
   ``ADH-AES128-GCM-SHA256`` over the RFC 7919 group ffdhe2048 (anonymous
   suites need OpenSSL security level 0).  The leader is the TLS client.
   The DH exchange gives both ends a fresh key for this connection and
   forward secrecy; AES-GCM gives confidentiality and integrity.  Nothing
   in TLS authenticates either end here: that is step 3.
2. *Key.*  ``K = scrypt(secret, salt, n=2**14, r=8, p=1)``, the salt being
   ``"punchcat-auth-v1"`` and both side ids of this run in sorted order.
   A guess of the secret costs one scrypt evaluation, and a fresh salt per
   run makes precomputation useless.
3. *Proofs.*  Each side proves it knows K for *this* TLS session:
   ``HMAC-SHA256(K, "punchcat proof v1" | role | tls-unique | both hellos)``,
   where tls-unique (RFC 5929) is TLS 1.2's Finished message and differs
   between the two legs of any man in the middle.  The leader sends its
   proof first; the follower checks it before it sends its own, and the
   leader checks that before any payload is delivered.  A wrong proof (or
   the peer leaving during this exchange) is "authentication failed" on
   both sides, with no payload byte delivered.
4. *Stream.*  Inside TLS every write is one frame ``length (4 bytes) | bytes``
   and a frame of length 0 ends the stream.  TLS 1.2 cannot half-close (no
   data may follow a close_notify), and the end marker, being encrypted and
   authenticated, also tells a real end from a truncation: a connection that
   ends without it is an error.

Limits: an active attacker who completes the TLS handshake with the leader
receives the leader's proof and can test guesses of the secret offline at
the cost of one scrypt per guess, so the secret must be strong
(``--gen-secret`` makes one).  The follower never reveals a proof to an
unauthenticated peer.  Who talks to whom, when and how much stays visible.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import secrets
import socket
import ssl
import struct
import threading

from .channel import Channel, lost, send_some
from .errors import AuthenticationFailed, LinkLost, PunchcatError

SUITE = "ADH-AES128-GCM-SHA256:@SECLEVEL=0"
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 32 * 1024 * 1024, "dklen": 32}
PROOF_LEN = 32
FRAME = struct.Struct("!I")
#: Largest plaintext frame; bigger writes are cut.
MAX_FRAME = 1024 * 1024
HANDSHAKE_TIMEOUT = 15.0


def generate_secret() -> str:
    """A fresh secret: 24 random bytes, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


def derive_key(secret: str, side_ids: tuple[bytes, bytes]) -> bytes:
    salt = b"punchcat-auth-v1" + b"".join(sorted(side_ids))
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def proof(key: bytes, role: bytes, binding: bytes, hellos: bytes) -> bytes:
    return hmac.new(key, b"punchcat proof v1|" + role + b"|" + binding + b"|" + hellos,
                    hashlib.sha256).digest()


def _context(server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers(SUITE)
    if server:
        params = importlib.resources.files("punchcat").joinpath("ffdhe2048.pem")
        with importlib.resources.as_file(params) as path:
            ctx.load_dh_params(str(path))
    return ctx


class SecureChannel(Channel):
    """TLS over the punched connection, with the framing of step 4.

    Received bytes are decrypted straight into the caller's buffer, frame
    headers are read separately; sent bytes are encrypted as they are, with
    the frame header as a record of its own.
    """

    plain = False

    def __init__(self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO):
        super().__init__(sock)
        self._obj, self._bio_in, self._bio_out = obj, incoming, outgoing
        self._lock = threading.Lock()        # the SSL object and its BIOs
        self._send_lock = threading.Lock()   # order of ciphertext on the socket
        self._frame_left = 0                 # data bytes left in the current frame
        self._head = bytearray(FRAME.size)   # a frame header being read
        self._head_len = 0
        self._eof = False
        self._cipher = bytearray(1 << 20)    # ciphertext read from the socket
        self._plain = bytearray(1 << 20)     # for the event loop's read()

    # -- records ----------------------------------------------------------------
    def _seal(self, data) -> bytes:
        """Frame and encrypt *data* (an empty frame ends the stream)."""
        view = memoryview(data).cast("B")
        with self._lock:
            if not view:
                self._obj.write(FRAME.pack(0))
            for start in range(0, len(view), MAX_FRAME):
                part = view[start:start + MAX_FRAME]
                self._obj.write(FRAME.pack(len(part)))
                self._obj.write(part)
            return self._bio_out.read()

    def _decrypt_into(self, view) -> int | None:
        """Plaintext into *view*; None when more ciphertext is needed."""
        with self._lock:
            try:
                n = self._obj.read(len(view), view)
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLZeroReturnError:
                raise self._ended_early() from None
            except ssl.SSLError as exc:
                raise LinkLost(f"the encrypted link failed its integrity check "
                               f"({exc.reason or exc})") from None
        return n if n else None

    def _pull(self, view) -> int | None:
        """Unframed data into *view*: its length, 0 at the end of the stream,
        None when more ciphertext is needed."""
        while True:
            if self._eof:
                return 0
            if self._frame_left:
                n = self._decrypt_into(view[:min(len(view), self._frame_left)])
                if n is not None:
                    self._frame_left -= n
                return n
            n = self._decrypt_into(memoryview(self._head)[self._head_len:])
            if n is None:
                return None
            self._head_len += n
            if self._head_len < FRAME.size:
                continue
            self._head_len = 0
            (length,) = FRAME.unpack(self._head)
            if length > MAX_FRAME:
                raise LinkLost("the encrypted link carried a malformed frame")
            if length == 0:
                self._eof = True
            self._frame_left = length

    def _feed(self, n: int) -> None:
        if n == 0:
            raise self._ended_early()
        with self._lock:
            self._bio_in.write(memoryview(self._cipher)[:n])

    def _ended_early(self) -> LinkLost:
        return LinkLost("the connection ended without the peer's end of stream "
                        "(truncated or cut)")

    # -- blocking (relay threads) ---------------------------------------------------
    def recv_into(self, buf) -> int:
        """Blocks until some data (or the end); then takes all that is decrypted."""
        view = memoryview(buf).cast("B")
        total = 0
        while total < len(view):
            n = self._pull(view[total:])
            if n:
                total += n
                continue
            if n == 0 or total:
                break                      # the end, or data in hand: return it
            try:
                got = self.sock.recv_into(self._cipher)
            except OSError as exc:
                raise lost(exc, "receiving") from None
            self._feed(got)
        return total

    def sendall(self, data) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(self._seal(data))
            except OSError as exc:
                raise lost(exc, "sending") from None

    def shutdown_write(self) -> None:
        """Send the authenticated end of stream (after anything still queued)."""
        with self._send_lock:
            queued = b"".join(bytes(part) for part in self._out)
            self._out.clear()
            self._out_bytes = 0
            try:
                self.sock.sendall(queued + self._seal(b""))
            except OSError as exc:
                raise lost(exc, "sending") from None

    # -- non-blocking (mux event loop) ----------------------------------------------
    def read(self, size: int = 1 << 20) -> bytes | None:
        """Data available now; b"" at the end of the stream; None if none yet."""
        view = memoryview(self._plain)[:size]
        total = 0
        while total < len(view):
            n = self._pull(view[total:])
            if n == 0:
                break
            if n is not None:
                total += n
                continue
            try:
                got = self.sock.recv_into(self._cipher)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise lost(exc, "receiving") from None
            if got == 0 and total:
                break                       # deliver what we have; the end comes next
            self._feed(got)
        if total:
            return bytes(view[:total])
        return b"" if self._eof else None

    def queue(self, buffers) -> None:
        sealed = self._seal(b"".join(bytes(b) for b in buffers))
        self._out.append(memoryview(sealed))
        self._out_bytes += len(sealed)

    def flush(self) -> None:
        while self._out:
            sent = send_some(self.sock, self._out)
            if not sent:
                return
            self._out_bytes -= sent


def _recv_exactly(sock: socket.socket, n: int, obj, incoming) -> bytes:
    """Read *n* decrypted bytes during authentication (blocking); what
    follows stays inside the SSL object for the channel."""
    got = bytearray()
    while len(got) < n:
        try:
            got += obj.read(n - len(got))
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            raise AuthenticationFailed(f"authentication failed: {exc.reason or exc}") from None
        data = sock.recv(65536)
        if not data:
            raise AuthenticationFailed(
                "authentication failed: the peer closed the connection (wrong secret?)")
        incoming.write(data)
    return bytes(got)


def secure(sock: socket.socket, secret: str, leader: bool, local_hello: bytes,
           peer_hello: bytes, leftover: bytes, side_ids: tuple[bytes, bytes]) -> SecureChannel:
    """Run steps 1-3 on the agreed connection; return the encrypted channel."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = _context(server=not leader).wrap_bio(incoming, outgoing, server_side=not leader)
    incoming.write(leftover)
    sock.settimeout(HANDSHAKE_TIMEOUT)
    key = derive_key(secret, side_ids)
    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise AuthenticationFailed("authentication failed: the peer closed the "
                                               "connection during the TLS handshake")
                incoming.write(data)
            except ssl.SSLError as exc:
                raise AuthenticationFailed(f"authentication failed: TLS handshake: "
                                           f"{exc.reason or exc}") from None
        if outgoing.pending:
            sock.sendall(outgoing.read())
        binding = obj.get_channel_binding("tls-unique")
        hellos = local_hello + peer_hello if leader else peer_hello + local_hello
        mine = proof(key, b"leader" if leader else b"follower", binding, hellos)
        theirs = proof(key, b"follower" if leader else b"leader", binding, hellos)
        if leader:
            obj.write(mine)
            sock.sendall(outgoing.read())
        got = _recv_exactly(sock, PROOF_LEN, obj, incoming)
        if not hmac.compare_digest(got, theirs):
            raise AuthenticationFailed("authentication failed: the peer does not know the "
                                       "same secret")
        if not leader:
            obj.write(mine)
            sock.sendall(outgoing.read())
    except socket.timeout:
        raise AuthenticationFailed("authentication failed: the peer did not answer") from None
    except OSError as exc:
        raise AuthenticationFailed(f"authentication failed: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return SecureChannel(sock, obj, incoming, outgoing)


def read_secret_file(path: str) -> str:
    """The secret in *path* (first line, surrounding whitespace removed)."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PunchcatError(f"cannot read the secret file {path}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    return secret


