"""Every socket option punchcat sets, in one place.

Two kinds of TCP socket exist here:

* a *punch* socket (:func:`punch_socket`): bound to a candidate port with
  SO_REUSEADDR/SO_REUSEPORT, non-blocking, its SYN sent at a chosen TTL with
  IP_MINTTL following it, and TCP_USER_TIMEOUT short so that the kernel never
  retransmits its SYN; :func:`settle` undoes the punching options once the
  connection completed;
* the *link*, the one agreed connection (:func:`prepare_link`): NODELAY,
  keepalive and TCP_USER_TIMEOUT from ``--keepalive``, and a small
  TCP_NOTSENT_LOWAT for the multiplexer.

:func:`reset_close` closes with a reset (no TIME_WAIT, and the other end sees
an abort).  ``PUNCHCAT_PORTABLE=1`` in the environment switches off the
Linux-only options (IP_MINTTL) here, and splice/sendfile in the relay, so
that tests exercise the portable code on Linux too.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

#: Set (to "1") to run the portable fallbacks on Linux (tests).
PORTABLE_ENV = "PUNCHCAT_PORTABLE"
PORTABLE = os.environ.get(PORTABLE_ENV) == "1"

IP_MINTTL = None if PORTABLE else getattr(socket, "IP_MINTTL", 21 if os.uname().sysname == "Linux" else None)
IPV6_MINHOPCOUNT = None if PORTABLE else getattr(
    socket, "IPV6_MINHOPCOUNT", 73 if os.uname().sysname == "Linux" else None)
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25 if os.uname().sysname == "Linux" else None)
#: What a non-blocking connect() answers when the SYN went out.
CONNECTING = (0, errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)
#: A punch socket's TCP_USER_TIMEOUT (ms): the kernel gives up at its first
#: SYN retransmission instead of re-sending it (our own recycling comes first).
PUNCH_USER_TIMEOUT_MS = 100
#: Linux's bound on TCP_KEEPIDLE and TCP_KEEPINTVL (seconds).
MAX_KEEP_SECONDS = 32767


def bound_socket(family: int, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to *port* on every local address."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def set_ttl(sock: socket.socket, ttl: int) -> None:
    """The TTL (hop limit) of what *sock* sends; -1 is the system default."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def set_min_ttl(sock: socket.socket, ttl: int) -> bool:
    """Ignore packets (and ICMP errors) that arrive with less than *ttl* left;
    False where the OS lacks the option."""
    option = IPV6_MINHOPCOUNT if sock.family == socket.AF_INET6 else IP_MINTTL
    if option is None:
        return False
    level = socket.IPPROTO_IPV6 if sock.family == socket.AF_INET6 else socket.IPPROTO_IP
    try:
        sock.setsockopt(level, option, ttl)
        return True
    except OSError:
        return False


def arm_sentinel(sock: socket.socket, ttl: int) -> bool:
    """Before ``connect()``: give *sock*'s SYN the TTL *ttl* and make the
    kernel ignore the ICMP time-exceeded it provokes (the router where it
    dies answers with one, which would abort a socket in SYN_SENT).  The
    caller restores the TTL after ``connect()``.

    IPv4: ``IP_MINTTL`` = *ttl*; for an ICMP error Linux compares it with the
    TTL left in the quoted copy of our SYN (1 or less where it died), while
    the peer's packets arrive with a TTL near 64 and pass.  IPv6:
    ``IPV6_MINHOPCOUNT`` is compared with the hop limit of the ICMPv6 packet
    itself, so only 255 ignores it; :func:`lift_guard` lowers it again once
    the error can no longer come (see :mod:`punchcat.traverse.hops`).
    Returns False when the option is missing (the sentinel then dies at
    its first ICMP error)."""
    set_ttl(sock, ttl)
    return set_min_ttl(sock, 255 if sock.family == socket.AF_INET6 else ttl)


def lift_guard(sock: socket.socket) -> None:
    """IPv6: accept packets of any hop limit again (the peer's SYN)."""
    if sock.family == socket.AF_INET6:
        set_min_ttl(sock, 0)


def punch_socket(family: int, port: int) -> socket.socket:
    """A punch socket on local *port* (OSError if the port is taken)."""
    sock = bound_socket(family, port)
    if TCP_USER_TIMEOUT is not None:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, PUNCH_USER_TIMEOUT_MS)
    return sock


def settle(sock: socket.socket) -> None:
    """Undo the punching options on a socket whose connection completed."""
    set_ttl(sock, -1)
    set_min_ttl(sock, 0)
    if TCP_USER_TIMEOUT is not None:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, 0)


def prepare_link(sock: socket.socket, keepalive: float) -> None:
    """The agreed connection's options: interactive, and a vanished peer
    noticed within about *keepalive* seconds, idle or sending.

    Idle: TCP keepalive probes start after half the bound and three
    unanswered probes, a sixth of the bound apart, end the connection.
    Sending: TCP_USER_TIMEOUT ends it when data stays unacknowledged for the
    bound.  The probes also keep NAT mappings along the path from expiring.
    A keystroke must not wait for an ACK (NODELAY); the kernel holds few
    unsent bytes (NOTSENT_LOWAT), so that the multiplexer, not the kernel,
    decides what goes next.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = (("TCP_KEEPIDLE", min(MAX_KEEP_SECONDS, max(1, round(keepalive / 2)))),
               ("TCP_KEEPINTVL", min(MAX_KEEP_SECONDS, max(1, round(keepalive / 6)))),
               ("TCP_KEEPCNT", 3),
               ("TCP_USER_TIMEOUT", min(2 ** 31 - 1, max(1, int(keepalive * 1000)))))
    for name, value in options:
        if hasattr(socket, name):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            except (OSError, OverflowError):
                pass              # an OS that lacks one still gets the others


def limit_unsent(sock: socket.socket, size: int) -> None:
    """Let the kernel hold at most about *size* unsent bytes (where it can)."""
    if TCP_NOTSENT_LOWAT is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, size)
        except OSError:
            pass


def connect_result(sock: socket.socket) -> int | None:
    """What a non-blocking connect on *sock* came to, once the selector says
    it is writable: 0 connected, an errno if it failed, None if a spurious
    wakeup left it still connecting."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        return err
    try:
        sock.getpeername()
    except OSError:
        return None
    return 0


def reset_close(sock: socket.socket) -> None:
    """Close with a reset: the other end sees an abort, and no TIME_WAIT stays
    behind to block the port for the next session."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def port_owners(port: int) -> set[int]:
    """The user ids of the TCP sockets bound to local *port* on this host
    (from /proc/net/tcp and tcp6; empty where they do not exist)."""
    owners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)                      # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        owners.add(int(fields[7]))
        except (OSError, ValueError, IndexError):
            continue
    return owners


def gave_up(sock: socket.socket) -> bool:
    """Whether the kernel was retransmitting or probing when *sock*'s
    connection ended: it ended because the peer stopped answering, even if
    the call that failed only says "Broken pipe" (TCP_INFO; False where
    that does not exist)."""
    if not hasattr(socket, "TCP_INFO"):
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    _state, _ca_state, retransmits, probes, backoff = info[:5]
    return bool(retransmits or probes or backoff)
