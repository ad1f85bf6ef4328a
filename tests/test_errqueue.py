"""The error queue: control messages decoded (pure), and what a probe socket
reads back over loopback (no privileges needed)."""

import errno
import socket
import struct
import time

import pytest
from hypothesis import given, strategies as st

from punchcat.traverse import errqueue
from punchcat.traverse.errqueue import (LOCAL, OTHER, TIME_EXCEEDED, UNREACHABLE,
                                        parse_extended_err)

# -- parsing ----------------------------------------------------------------------


def ee(err, origin, icmp_type, code, info=0, data=0) -> bytes:
    return struct.pack("=IBBBBII", err, origin, icmp_type, code, 0, info, data)


def sockaddr_in(address: str, port: int = 0) -> bytes:
    return (struct.pack("=H", socket.AF_INET) + struct.pack("!H", port)
            + socket.inet_aton(address) + bytes(8))


def sockaddr_in6(address: str, port: int = 0, scope: int = 0) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, address) + struct.pack("=I", scope))


def test_ipv4_time_exceeded():
    data = ee(errno.EHOSTUNREACH, errqueue.SO_EE_ORIGIN_ICMP, 11, 0) + sockaddr_in("192.168.1.1")
    err = parse_extended_err(socket.IPPROTO_IP, errqueue.IP_RECVERR, data)
    assert err == errqueue.ExtendedError(errno.EHOSTUNREACH, 2, 11, 0, 0, 0, "192.168.1.1")
    assert err.kind == TIME_EXCEEDED


def test_ipv4_port_unreachable():
    data = ee(errno.ECONNREFUSED, errqueue.SO_EE_ORIGIN_ICMP, 3, 3) + sockaddr_in("203.0.113.20")
    err = parse_extended_err(0, 11, data)
    assert (err.offender, err.kind, err.type, err.code) == ("203.0.113.20", UNREACHABLE, 3, 3)


def test_ipv4_other_icmp_error():
    data = ee(errno.EPROTO, errqueue.SO_EE_ORIGIN_ICMP, 12, 0) + sockaddr_in("10.0.0.1")
    assert parse_extended_err(0, 11, data).kind == OTHER


def test_ipv6_time_exceeded_and_port_unreachable():
    data = ee(errno.EHOSTUNREACH, errqueue.SO_EE_ORIGIN_ICMP6, 3, 0) + sockaddr_in6("2001:db8:1::1")
    err = parse_extended_err(socket.IPPROTO_IPV6, errqueue.IPV6_RECVERR, data)
    assert (err.offender, err.kind) == ("2001:db8:1::1", TIME_EXCEEDED)
    data = ee(errno.ECONNREFUSED, errqueue.SO_EE_ORIGIN_ICMP6, 1, 4) + sockaddr_in6("2001:db8:b::2")
    err = parse_extended_err(41, 25, data)
    assert (err.offender, err.kind, err.code) == ("2001:db8:b::2", UNREACHABLE, 4)


def test_ipv6_bytes_as_linux_delivered_them():
    # recvmsg(MSG_ERRQUEUE) on x86_64, Linux 6.18: hop 1 of the IPv6 lab.
    data = (b"q\x00\x00\x00\x03\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
            b"\n\x00\x00\x00\x00\x00\x00\x00 \x01\r\xb8\x00\n\x00\x00\x00\x00\x00\x00"
            b"\x00\x00\x00\x01\x00\x00\x00\x00")
    err = parse_extended_err(41, 25, data)
    assert err == errqueue.ExtendedError(113, 3, 3, 0, 0, 0, "2001:db8:a::1")


def test_ipv4_mapped_offender_reads_as_ipv4():
    data = ee(errno.EHOSTUNREACH, errqueue.SO_EE_ORIGIN_ICMP, 11, 0) + sockaddr_in6("::ffff:10.1.2.3")
    assert parse_extended_err(0, 11, data).offender == "10.1.2.3"


def test_local_error_has_no_offender():
    data = ee(errno.EMSGSIZE, errqueue.SO_EE_ORIGIN_LOCAL, 0, 0, info=1400) + bytes(16)
    err = parse_extended_err(0, 11, data)
    assert err.offender is None and err.kind == LOCAL and err.info == 1400


@pytest.mark.parametrize("level,kind", [(0, 2), (41, 52), (1, 11), (0, 25)])
def test_other_control_messages_are_ignored(level, kind):
    data = ee(errno.EHOSTUNREACH, 2, 11, 0) + sockaddr_in("192.168.1.1")
    assert parse_extended_err(level, kind, data) is None


def test_truncated_messages():
    full = ee(errno.EHOSTUNREACH, 2, 11, 0) + sockaddr_in("192.168.1.1")
    assert parse_extended_err(0, 11, full[:15]) is None
    assert parse_extended_err(0, 11, full[:16]).offender is None       # no sockaddr at all
    assert parse_extended_err(0, 11, full[:20]).offender is None       # cut in the address
    six = ee(errno.EHOSTUNREACH, 3, 3, 0) + sockaddr_in6("2001:db8::1")
    assert parse_extended_err(41, 25, six[:30]).offender is None


@given(level=st.sampled_from([0, 41]), data=st.binary(max_size=64))
def test_parsing_never_raises(level, data):
    err = parse_extended_err(level, 11 if level == 0 else 25, data)
    assert err is None or err.kind in (TIME_EXCEEDED, UNREACHABLE, OTHER, LOCAL)


# -- over loopback ------------------------------------------------------------------

def closed_port(family: int, host: str) -> int:
    """A UDP port nobody listens on (bound a moment ago, then closed)."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def errors_after(sock: socket.socket, timeout: float = 1.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = errqueue.read_errors(sock)
        if found:
            return found
        time.sleep(0.005)
    return []


@pytest.mark.skipif(not errqueue.AVAILABLE, reason="no error queue on this system")
def test_a_closed_port_reads_back_as_port_unreachable_from_its_host():
    sock = errqueue.probe_socket(socket.AF_INET, 5)
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 5
        sock.connect(("127.0.0.1", closed_port(socket.AF_INET, "127.0.0.1")))
        sock.send(b"probe")
        found = errors_after(sock)
        assert [(e.errno, e.from_icmp, e.kind, e.type, e.code, e.offender) for e in found] == \
            [(errno.ECONNREFUSED, True, UNREACHABLE, 3, 3, "127.0.0.1")]
        assert errqueue.read_errors(sock) == []                 # the queue is dry
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    finally:
        sock.close()


@pytest.mark.skipif(not errqueue.AVAILABLE, reason="no error queue on this system")
def test_an_ipv6_closed_port_reads_back_as_icmpv6_port_unreachable():
    try:
        port = closed_port(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    sock = errqueue.probe_socket(socket.AF_INET6, 5)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) == 5
        sock.connect(("::1", port))
        sock.send(b"probe")
        found = errors_after(sock)
        assert [(e.origin, e.kind, e.type, e.code, e.offender) for e in found] == \
            [(errqueue.SO_EE_ORIGIN_ICMP6, UNREACHABLE, 1, 4, "::1")]
    finally:
        sock.close()


@pytest.mark.skipif(not errqueue.AVAILABLE, reason="no error queue on this system")
def test_an_answer_is_not_taken_for_an_error():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    sock = errqueue.probe_socket(socket.AF_INET, 64)
    try:
        sock.connect(listener.getsockname())
        sock.send(b"probe")
        data, peer = listener.recvfrom(64)
        listener.sendto(b"answer", peer)
        time.sleep(0.02)
        assert errqueue.read_errors(sock) == []
        assert sock.recv(64) == b"answer"                       # still there to be read
    finally:
        sock.close()
        listener.close()
