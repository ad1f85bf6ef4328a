"""A shared secret: mutual authentication and an encrypted link, standard library only.

Construction (see also the README's design note)
------------------------------------------------
1. *Record layer.*  The agreed connection is wrapped in TLS 1.2 by the
   standard library (OpenSSL) with the anonymous Diffie-Hellman suite
   ``ADH-AES128-GCM-SHA256`` over the RFC 7919 group ffdhe3072 (anonymous
   suites need OpenSSL security level 0; the leader refuses any other
   group, see :class:`ServerFlightScan`).  The leader is the TLS client.
   The DH exchange gives both ends a fresh key for this connection and
   forward secrecy; AES-GCM gives confidentiality and integrity.  Nothing
   in TLS authenticates either end here: that is step 2.  Every run makes
   fresh contexts, and session tickets and renegotiation are off, so each
   connection is one full handshake and its tls-unique is its own.
2. *SRP-6a inside TLS* (:mod:`punchcat.srp`: RFC 2945 with RFC 5054's
   3072-bit group and formulas, SHA-256).  The follower is the SRP server:
   it draws a fresh 16-byte salt, derives the verifier from the secret for
   this run only, and sends ``salt | B`` (400 bytes).  The leader, the SRP
   client, answers ``A | M1`` (416 bytes); the follower checks M1 and only
   then sends M2 (32 bytes), which the leader checks.  M1 and M2 are
   HMAC-SHA256 under the SRP session key over the TLS channel binding
   (tls-unique, RFC 5929: TLS 1.2's Finished message, different on the two
   legs of any man in the middle), both hellos, the salt, A and B.  Neither
   side ever sends anything that lets its peer test a guess of the secret
   offline: a peer without the secret gets one guess per run of the real
   peer, and that run fails.  So no slow hash is needed and a short code
   (:func:`punchcat.secret.generate_code`) is a sound secret.  Codes are
   compared by their digits (:func:`punchcat.secret.normalize_secret`).  A
   wrong secret, a malformed SRP message or the peer leaving during the
   exchange is "authentication failed" on both sides, and no payload byte
   is delivered before both checks have passed (the leader's data waits for
   M2 in the SSL object).  Both sides then derive the stream's *resume key*
   from the SRP session key and this link's channel binding
   (:func:`punchcat.resume.key_from_srp`).
3. *Stream.*  Inside TLS travel the stream's records (:mod:`punchcat.stream`),
   whose EOF, being encrypted and authenticated, tells a real end from a
   truncation: a link that closes without it broke, and the stream resumes
   on a new one or fails.  TLS 1.2 cannot half-close (no data may follow a
   close_notify); the records do not need it.
4. *A new link for the same stream* (after a break, or from a relay to a
   direct path) runs step 1 afresh and, instead of SRP, both sides prove
   they hold the resume key: the leader sends HMAC(key, "leader" | binding
   | hellos), the follower checks it and only then sends its own
   (:class:`punchcat.resume.Prover`).  The key is 256 random-looking bits
   known to the two ends only, so nothing can be guessed, and the binding
   keeps a man in the middle from relaying the proofs.

Limits: an active attacker who wins the punch can make one guess of the
secret per run, and the real user sees that run fail.  Who talks to whom,
when and how much stays visible, and so do the mode and the "uses a
secret" flag in the clear hello.
"""

from __future__ import annotations

import base64
import importlib.resources
import socket
import ssl
import struct
import threading
import time

from . import resume, srp
from .channel import Channel, send_some
from .errors import AuthenticationFailed, LinkLost, Tampered
from .secret import normalize_secret

__all__ = ["AuthenticationFailed", "SecureChannel", "secure"]

SUITE = "ADH-AES128-GCM-SHA256:@SECLEVEL=0"
#: The whole authentication (TLS handshake and SRP) must be done within this long.
HANDSHAKE_TIMEOUT = 15.0
#: TLS extension type of the extended master secret (RFC 7627).
EXTENDED_MASTER_SECRET = 23

def _context(server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers(SUITE)
    # One full handshake per connection, never resumed or renegotiated: what
    # tls-unique needs to be unique to the connection (no triple handshake).
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    if server:
        params = importlib.resources.files("punchcat").joinpath(GROUP_FILE)
        with importlib.resources.as_file(params) as path:
            ctx.load_dh_params(str(path))
    return ctx


class SecureChannel(Channel):
    """TLS over the punched connection: an encrypted byte pipe.

    What it carries is the stream's records (:mod:`punchcat.stream`), which
    also say where the stream ends: a TLS connection that closes is a link
    that broke, never the end of the data.  Received bytes are decrypted
    straight into the caller's buffer; sent bytes are encrypted as they
    come, in TLS records of up to 16 KiB.
    """

    plain = False

    def __init__(self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO, resume_key: bytes):
        super().__init__(sock)
        self._obj, self._bio_in, self._bio_out = obj, incoming, outgoing
        self._lock = threading.Lock()        # the SSL object and its BIOs
        self._send_lock = threading.Lock()   # order of ciphertext on the socket
        self._cipher = bytearray(1 << 20)    # ciphertext read from the socket
        self._plain = bytearray(1 << 20)     # for the event loop's read()
        #: The key a new link proves it continues this stream with (punchcat.resume).
        self.resume_key = resume_key
        self._failed = False                 # a record failed its check: nothing more is sealed
        self._alert = b""                    # TLS's alert for the peer, sent in place of the next seal

    def _seal(self, parts) -> bytes:
        with self._lock:
            if self._failed:
                # After a changed record the link only carries TLS's alert,
                # so that the peer stops too instead of resuming.
                if not self._alert:
                    raise LinkLost("the encrypted link failed its integrity check")
                alert, self._alert = self._alert, b""
                return alert
            try:
                for part in parts:
                    if len(part):
                        self._obj.write(part)
            except ssl.SSLError as exc:      # the TLS session failed (e.g. a peer's alert)
                raise LinkLost(f"the encrypted link failed ({exc.reason or exc})") from None
            return self._bio_out.read()

    def _decrypt_into(self, view) -> int | None:
        """Plaintext into *view*; None when more ciphertext is needed, 0 at a
        close_notify (the link ends: the stream knows whether it should)."""
        with self._lock:
            try:
                return self._obj.read(len(view), view) or None
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLZeroReturnError:
                return 0
            except ssl.SSLError as exc:
                self._failed = True
                self._alert = self._bio_out.read()   # bad_record_mac, for the peer
                if "ALERT_BAD_RECORD_MAC" in str(exc.reason):
                    raise Tampered("the peer found a record of ours changed on the way: the "
                                   "encrypted link failed its integrity check") from None
                raise Tampered(f"the encrypted link failed its integrity check "
                               f"({exc.reason or exc})") from None

    def _feed(self, n: int) -> None:
        with self._lock:
            self._bio_in.write(memoryview(self._cipher)[:n])

    # -- blocking (relay threads) ---------------------------------------------------
    def recv_into(self, buf) -> int:
        """Blocks until some plaintext (or the link's end, 0); then takes all
        that is decrypted."""
        view = memoryview(buf).cast("B")
        total = 0
        while total < len(view):
            n = self._decrypt_into(view[total:])
            if n:
                total += n
                continue
            if n == 0 or total:
                break                      # the end, or data in hand: return it
            try:
                got = self.sock.recv_into(self._cipher)
            except OSError as exc:
                raise LinkLost.from_os(exc, "receiving") from None
            if not got:
                break
            self._feed(got)
        return total

    def sendall(self, data) -> None:
        self.send_parts([data])

    def send_parts(self, parts, more: bool = False) -> None:
        """Encrypt *parts* (bytes-like) and send them, in order."""
        with self._send_lock:
            try:
                self.sock.sendall(self._seal(parts))
            except OSError as exc:
                raise LinkLost.from_os(exc, "sending") from None

    # -- non-blocking (mux event loop) ----------------------------------------------
    def read(self, size: int = 1 << 20) -> bytes | None:
        """Plaintext available now; b"" at the link's end; None if none yet."""
        view = memoryview(self._plain)[:size]
        total, ended = 0, False
        while total < len(view):
            n = self._decrypt_into(view[total:])
            if n:
                total += n
                continue
            if n == 0:
                ended = True
                break
            try:
                got = self.sock.recv_into(self._cipher)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise LinkLost.from_os(exc, "receiving") from None
            if not got:
                ended = True
                break
            self._feed(got)
        if total:
            return view[:total]           # reused by the next call (see Channel.read)
        return b"" if ended else None

    def queue(self, buffers) -> None:
        sealed = self._seal(buffers)
        self._out.append(memoryview(sealed))
        self._out_bytes += len(sealed)

    def flush(self) -> None:
        while self._out:
            sent = send_some(self.sock, self._out)
            if not sent:
                return
            self._out_bytes -= sent


class _Deadline:
    """One deadline for the whole authentication, however the peer trickles
    its bytes: every blocking call on the socket gets what is left of it."""

    def __init__(self, sock: socket.socket, seconds: float):
        self.sock = sock
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def arm(self) -> None:
        left = self.at - time.monotonic()
        if left <= 0:
            raise socket.timeout
        self.sock.settimeout(left)

    def recv(self, size: int) -> bytes:
        self.arm()
        return self.sock.recv(size)

    def sendall(self, data) -> None:
        self.arm()
        self.sock.sendall(data)


class ServerFlightScan:
    """Reads the server's first flight in a byte stream (the TLS 1.2 records
    as they travel, before encryption starts) and keeps what punchcat must
    check and Python's ssl module does not say:

    * the ServerHello's extensions: the extended master secret (RFC 7627,
      extension 23) must have been negotiated (the server sends it only when
      both ends agreed on it; OpenSSL has no switch to require it);
    * the ServerKeyExchange's Diffie-Hellman group (p, g): it must be the one
      punchcat's follower sends (:data:`GROUP`).  A TLS client accepts any
      group the server names, even one whose generator has a small order
      (measured: a 2048-bit group with a generator of order 3 completed a
      handshake); the channel binding would still hold, but the margin costs
      nothing to keep.

    The leader (TLS client) scans what it receives, and checks the group
    before it sends its own key share; the follower scans what it sends.
    Both see the same messages, which the TLS Finished messages authenticate.
    """

    LIMIT = 64 * 1024

    def __init__(self):
        self._records = bytearray()
        self._handshake = bytearray()
        self._seen = 0                   # bytes taken in, at most LIMIT
        #: The ServerHello's extension types, once it has been seen.
        self.extensions: frozenset[int] | None = None
        #: The ServerKeyExchange's (p, g), once it has been seen.
        self.group: tuple[int, int] | None = None

    @property
    def done(self) -> bool:
        return self.extensions is not None and self.group is not None

    def feed(self, data) -> None:
        if self.done or self._seen > self.LIMIT:
            return
        self._seen += len(data)
        self._records += data
        while len(self._records) >= 5 and not self.done:
            kind, _version, length = struct.unpack_from("!BHH", self._records)
            if len(self._records) < 5 + length:
                return
            fragment = bytes(self._records[5:5 + length])
            del self._records[:5 + length]
            if kind != 22:                        # not a handshake record
                continue
            self._handshake += fragment
            self._messages()

    def _messages(self) -> None:
        while len(self._handshake) >= 4 and not self.done:
            size = int.from_bytes(self._handshake[1:4], "big")
            if len(self._handshake) < 4 + size:
                return
            kind, body = self._handshake[0], bytes(self._handshake[4:4 + size])
            del self._handshake[:4 + size]
            if self.extensions is None:
                # The first message must be the ServerHello.
                self.extensions = _hello_extensions(body) if kind == 2 else frozenset()
            elif kind == 12:                      # ServerKeyExchange
                self.group = _dh_group(body)
            elif kind == 14:                      # ServerHelloDone: no key exchange came
                self.group = (0, 0)


def _hello_extensions(body: bytes) -> frozenset[int]:
    """The extension types of a ServerHello body (empty if malformed)."""
    try:
        pos = 2 + 32                              # version, random
        pos += 1 + body[pos]                      # session id
        pos += 2 + 1                              # cipher suite, compression
        if pos + 2 > len(body):
            return frozenset()
        end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
        found = set()
        while pos + 4 <= min(end, len(body)):
            found.add(int.from_bytes(body[pos:pos + 2], "big"))
            pos += 4 + int.from_bytes(body[pos + 2:pos + 4], "big")
        return frozenset(found)
    except IndexError:
        return frozenset()


def _dh_group(body: bytes) -> tuple[int, int]:
    """(p, g) of an anonymous DH ServerKeyExchange body (``dh_p``, ``dh_g``,
    ``dh_Ys``, each with a 2-byte length); (0, 0) if malformed."""
    values, pos = [], 0
    for _ in range(2):
        if pos + 2 > len(body):
            return 0, 0
        size = int.from_bytes(body[pos:pos + 2], "big")
        if pos + 2 + size > len(body):
            return 0, 0
        values.append(int.from_bytes(body[pos + 2:pos + 2 + size], "big"))
        pos += 2 + size
    return values[0], values[1]


def _pem_group(pem: str) -> tuple[int, int]:
    """(p, g) of a PEM "DH PARAMETERS" block (DER: a SEQUENCE of two INTEGERs)."""
    der = base64.b64decode("".join(line for line in pem.splitlines() if "-----" not in line))

    def length(pos: int) -> tuple[int, int]:
        first = der[pos]
        if first < 0x80:
            return first, pos + 1
        size = first & 0x7F
        return int.from_bytes(der[pos + 1:pos + 1 + size], "big"), pos + 1 + size

    _, pos = length(1)                            # the SEQUENCE
    found = []
    for _ in range(2):
        if der[pos] != 2:
            raise ValueError(f"{GROUP_FILE}: not DH parameters")
        size, pos = length(pos + 1)
        found.append(int.from_bytes(der[pos:pos + size], "big"))
        pos += size
    return found[0], found[1]


#: The Diffie-Hellman group the follower sends and the leader accepts: RFC
#: 7919's ffdhe3072, as strong as SRP's 3072-bit group (a test checks the
#: shipped parameters against the RFC's formula).
GROUP_FILE = "ffdhe3072.pem"
GROUP = _pem_group(importlib.resources.files("punchcat").joinpath(GROUP_FILE).read_text())


def _recv_exactly(wire: _Deadline, n: int, obj, incoming) -> bytes:
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
        data = wire.recv(65536)
        if not data:
            raise AuthenticationFailed(
                "authentication failed: the peer closed the connection (wrong secret?)")
        incoming.write(data)
    return bytes(got)


def _send(wire: _Deadline, obj, outgoing, data: bytes = b"") -> None:
    """Encrypt *data* and send it with whatever TLS has queued."""
    if data:
        obj.write(data)
    if outgoing.pending:
        wire.sendall(outgoing.read())


def secure(sock: socket.socket, secret: str | None, leader: bool, local_hello: bytes,
           peer_hello: bytes, leftover: bytes, timeout: float = HANDSHAKE_TIMEOUT, *,
           resume_key: bytes | None = None) -> SecureChannel:
    """Run steps 1 and 2 on the agreed connection; return the encrypted channel.

    With *secret* (through :func:`punchcat.secret.normalize_secret`) step 2
    is SRP-6a; on a link that continues a stream, with its *resume_key*
    instead, each side proves it holds that key (:func:`punchcat.resume.proof`
    over the same channel binding and hellos: a random 256-bit key, so no
    exponentiation is needed and nothing can be guessed).  The whole of it,
    TLS handshake and proofs, must be done within *timeout* seconds, however
    slowly the peer sends.  Raises :class:`AuthenticationFailed` for any
    failure before the channel exists.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = _context(server=not leader).wrap_bio(incoming, outgoing, server_side=not leader)
    scan = ServerFlightScan()
    incoming.write(leftover)
    if leader:
        scan.feed(leftover)
    wire = _Deadline(sock, timeout)
    if resume_key is not None:
        side = resume.Prover(resume_key, leader)
    else:
        password = normalize_secret(secret).encode("utf-8", "surrogateescape")
        side = None

    def prepare():
        """The SRP side, made (A, resp. salt and B) the first time TLS waits
        for the peer, so that the exponentiations overlap the round trip."""
        nonlocal side
        if side is None:
            side = srp.SrpClient(password) if leader else srp.SrpServer(password)
        return side
    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    data = outgoing.read()
                    if not leader:
                        scan.feed(data)
                    wire.sendall(data)
                    prepare()
                data = wire.recv(65536)
                if not data:
                    raise AuthenticationFailed("authentication failed: the peer closed the "
                                               "connection during the TLS handshake")
                if leader:
                    scan.feed(data)
                    if scan.group not in (None, GROUP):
                        raise AuthenticationFailed(
                            "authentication failed: the peer's TLS offered a Diffie-Hellman "
                            "group other than punchcat's (RFC 7919 ffdhe3072)")
                incoming.write(data)
            except ssl.SSLError as exc:
                raise AuthenticationFailed(f"authentication failed: TLS handshake: "
                                           f"{exc.reason or exc}") from None
        if leader and scan.group != GROUP:
            raise AuthenticationFailed("authentication failed: the TLS handshake did not use "
                                       "punchcat's Diffie-Hellman group (RFC 7919 ffdhe3072)")
        if EXTENDED_MASTER_SECRET not in (scan.extensions or ()):
            raise AuthenticationFailed("authentication failed: the TLS handshake did not "
                                       "negotiate the extended master secret (RFC 7627)")
        binding = obj.get_channel_binding("tls-unique")
        hellos = local_hello + peer_hello if leader else peer_hello + local_hello
        side = prepare()
        if isinstance(side, (srp.SrpClient, resume.Prover)) and leader:
            _send(wire, obj, outgoing)
            if isinstance(side, srp.SrpClient):
                response = side.respond(_recv_exactly(wire, side.expect, obj, incoming),
                                        binding, hellos)
            else:
                response = side.claim(binding, hellos)
            _send(wire, obj, outgoing, response)
            side.confirm(_recv_exactly(wire, side.expect, obj, incoming))
        elif isinstance(side, srp.SrpServer):
            _send(wire, obj, outgoing, side.challenge)       # with TLS's Finished
            confirmation = side.verify(_recv_exactly(wire, side.expect, obj, incoming),
                                       binding, hellos)
            _send(wire, obj, outgoing, confirmation)
        else:
            _send(wire, obj, outgoing)                       # TLS's Finished
            confirmation = side.verify(_recv_exactly(wire, side.expect, obj, incoming),
                                       binding, hellos)
            _send(wire, obj, outgoing, confirmation)
        key = resume_key if resume_key is not None else resume.key_from_srp(side.key, binding)
    except socket.timeout:
        raise AuthenticationFailed(f"authentication failed: the peer did not complete it "
                                   f"within {timeout:g} s") from None
    except OSError as exc:
        raise AuthenticationFailed(f"authentication failed: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return SecureChannel(sock, obj, incoming, outgoing, key)
