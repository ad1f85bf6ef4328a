"""Linux's socket error queue: the ICMP errors our datagrams provoked, and who sent them.

Hop discovery (:mod:`punchcat.traverse.hops`) needs, for each probe, the
address of the router that answered it, without root (a raw ICMP socket
needs it).  With ``IP_RECVERR`` (``IPV6_RECVERR``) set on a UDP socket
(:func:`probe_socket`), the kernel keeps every ICMP error about a datagram
the socket sent on the socket's *error queue*.  ``recvmsg(...,
MSG_ERRQUEUE)`` reads one error per call (:func:`read_errors`): as data,
the payload of the datagram that provoked it; as one control message (level
``SOL_IP``/``IP_RECVERR``, ``SOL_IPV6``/``IPV6_RECVERR``), ``struct
sock_extended_err`` (errno, origin, ICMP type and code, 16 bytes) followed by
the address of the node that sent the ICMP (``SO_EE_OFFENDER``; family
``AF_UNSPEC`` for an error our own kernel raised), decoded by
:func:`parse_extended_err` into an :class:`ExtendedError`.

Measured (Linux 6.18, x86_64, Python 3.11, over loopback):

* A datagram to a closed port of 127.0.0.1 reads back errno ECONNREFUSED,
  origin ICMP, type 3 code 3, offender 127.0.0.1, in a control message of
  32 bytes (16 + ``sockaddr_in``); of ::1, origin ICMP6, type 1 code 4, in
  44 bytes (16 + ``sockaddr_in6``).  A *time exceeded* reads errno
  EHOSTUNREACH (hop 1 of the IPv6 lab; its bytes are in
  ``tests/test_errqueue.py``).
* While an error is queued, the socket polls ``POLLERR`` (not ``POLLIN``),
  which a selector that waits for reading reports as readable; the error is
  also the socket's pending error, so a second ``send`` fails with it
  (ECONNREFUSED).  Reading ``SO_ERROR`` clears the pending error and leaves
  the queue; reading the queue dry clears both.
* Python's socket module lacks ``IP_RECVERR`` and ``IPV6_RECVERR``: the
  Linux values stand below.

The queue is Linux's (:data:`AVAILABLE`); elsewhere the numbers below mean
other options, and ``PUNCHCAT_PORTABLE=1`` takes the other systems' path.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass

from ..addresses import unmapped
from ..sockopts import PORTABLE

#: The error queue is Linux's (elsewhere the numbers below mean other options).
AVAILABLE = sys.platform.startswith("linux") and not PORTABLE
#: Linux values, for Pythons whose socket module lacks the names.
SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", socket.IPPROTO_IPV6)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)

#: ``sock_extended_err.ee_origin``.
SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

#: ``struct sock_extended_err``: ee_errno, ee_origin, ee_type, ee_code,
#: ee_pad, ee_info, ee_data (native byte order), then the offender's sockaddr.
_EE = struct.Struct("=IBBBBII")
_SA_FAMILY = struct.Struct("=H")

#: What an error says of the hop that sent it.
TIME_EXCEEDED = "time-exceeded"
UNREACHABLE = "unreachable"
OTHER = "other"          # another ICMP error (parameter problem, ...)
LOCAL = "local"          # an error raised by our own kernel, not a hop


@dataclass(frozen=True)
class ExtendedError:
    """One ``IP_RECVERR``/``IPV6_RECVERR`` control message, decoded."""

    errno: int
    origin: int
    type: int
    code: int
    info: int
    data: int
    offender: str | None      # who sent the ICMP; None for a local error

    @property
    def from_icmp(self) -> bool:
        """A hop's ICMP error (not one of our own kernel's)."""
        return self.origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6)

    @property
    def kind(self) -> str:
        if self.origin == SO_EE_ORIGIN_ICMP:
            return {11: TIME_EXCEEDED, 3: UNREACHABLE}.get(self.type, OTHER)
        if self.origin == SO_EE_ORIGIN_ICMP6:
            return {3: TIME_EXCEEDED, 1: UNREACHABLE}.get(self.type, OTHER)
        return LOCAL


def parse_extended_err(level: int, kind: int, data: bytes) -> ExtendedError | None:
    """Decode one control message from ``recvmsg(..., MSG_ERRQUEUE)``.

    Returns None for any other control message or a truncated one.  The
    offender is the sockaddr right after the 16-byte ``sock_extended_err``
    (``SO_EE_OFFENDER``): ``sockaddr_in`` (16 bytes) or ``sockaddr_in6`` (28);
    its family is ``AF_UNSPEC`` for errors of local origin.
    """
    if (level, kind) not in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
        return None
    if len(data) < _EE.size:
        return None
    err, origin, icmp_type, code, _pad, info, extra = _EE.unpack_from(data)
    offender = None
    if len(data) >= _EE.size + _SA_FAMILY.size:
        (family,) = _SA_FAMILY.unpack_from(data, _EE.size)
        if family == socket.AF_INET and len(data) >= _EE.size + 8:
            offender = socket.inet_ntop(socket.AF_INET, data[_EE.size + 4:_EE.size + 8])
        elif family == socket.AF_INET6 and len(data) >= _EE.size + 24:
            offender = str(unmapped(ipaddress.IPv6Address(data[_EE.size + 8:_EE.size + 24])))
    return ExtendedError(err, origin, icmp_type, code, info, extra, offender)


def probe_socket(family: int, ttl: int) -> socket.socket:
    """A non-blocking UDP socket whose datagrams leave with *ttl* and whose
    ICMP errors queue up for :func:`read_errors`."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    except OSError:
        sock.close()
        raise
    return sock


def read_errors(sock: socket.socket) -> list[ExtendedError]:
    """Drain *sock*'s error queue without blocking (a datagram that came
    back as an answer stays to be read)."""
    found = []
    while True:
        try:
            _data, ancdata, _flags, _addr = sock.recvmsg(256, 512, MSG_ERRQUEUE)
        except OSError:                 # BlockingIOError: the queue is dry
            break
        for level, kind, data in ancdata:
            err = parse_extended_err(level, kind, data)
            if err is not None:
                found.append(err)
    return found
