"""PCP (RFC 6887), sans I/O: the MAP opcode for TCP.

Addresses travel as 16 bytes (IPv4 as IPv4-mapped IPv6, ``::ffff:a.b.c.d``).
:func:`map_request` builds a request (lifetime 0 deletes);
:func:`parse_map_response` checks a response against the request it answers
(version, opcode, the 96-bit nonce, protocol and internal port) and returns a
:class:`MapResponse` whatever its result code; anything else raises
:class:`MalformedResponse`.  A NAT-PMP-only gateway answers a PCP request
with a NAT-PMP "unsupported version" packet: that parses to a response with
``version == 0`` and result ``UNSUPP_VERSION``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .common import MalformedResponse

PORT = 5351
VERSION = 2
OP_MAP = 1
PROTO_TCP = 6
MAX_PACKET = 1100
HEADER = 24
MAP_PAYLOAD = 36

RESULT_NAMES = {
    0: "SUCCESS", 1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE", 5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE",
    8: "NO_RESOURCES", 9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL", 12: "ADDRESS_MISMATCH", 13: "EXCESSIVE_REMOTE_PEERS",
}
SUCCESS, UNSUPP_VERSION, NOT_AUTHORIZED = 0, 1, 2
#: Also what miniupnpd answers to the deletion of a mapping that is not
#: there: for a deletion, as good as success.
NO_RESOURCES = 8
CANNOT_PROVIDE_EXTERNAL, ADDRESS_MISMATCH = 11, 12


def result_text(code: int) -> str:
    return RESULT_NAMES.get(code, f"unknown result code {code}")


def pack_address(address: str) -> bytes:
    """16 bytes: an IPv6 address as is, an IPv4 one IPv4-mapped."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def unpack_address(raw: bytes) -> str:
    """The text form of 16 address bytes (IPv4-mapped ones as IPv4)."""
    ip = ipaddress.IPv6Address(bytes(raw))
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


@dataclass(frozen=True)
class MapResponse:
    version: int
    result: int
    lifetime: int                # granted (success) or how long the error holds
    epoch: int
    internal_port: int
    external_port: int
    external_address: str | None

    @property
    def ok(self) -> bool:
        return self.result == SUCCESS


def map_request(client_address: str, internal_port: int, nonce: bytes, lifetime: int,
                suggested_port: int | None = None,
                suggested_address: str = "0.0.0.0") -> bytes:
    """A MAP request for TCP *internal_port* of *client_address* (the source
    address of the datagram, or the server answers ADDRESS_MISMATCH).  The
    suggested external port is the internal one unless given; the all-zero
    IPv4 suggested address asks for an IPv4 external address."""
    if len(nonce) != 12:
        raise ValueError("the mapping nonce is 12 bytes")
    if not 0 < internal_port < 65536:
        raise ValueError("internal port out of range")
    port = internal_port if suggested_port is None else suggested_port
    if not 0 <= port < 65536 or not 0 <= lifetime < 2**32:
        raise ValueError("port or lifetime out of range")
    header = struct.pack("!BBHI", VERSION, OP_MAP, 0, lifetime) + pack_address(client_address)
    payload = (bytes(nonce) + struct.pack("!B3xHH", PROTO_TCP, internal_port, port)
               + pack_address(suggested_address))
    return header + payload


def _check_options(data: bytes, start: int) -> None:
    offset = start
    while offset < len(data):
        if len(data) - offset < 4:
            raise MalformedResponse("PCP option header truncated")
        (length,) = struct.unpack_from("!H", data, offset + 2)
        padded = (length + 3) // 4 * 4
        offset += 4 + padded
        if offset > len(data):
            raise MalformedResponse("PCP option runs past the packet")


def parse_map_response(data: bytes, nonce: bytes, internal_port: int) -> MapResponse:
    """Parse *data* as the answer to our MAP request with *nonce* for TCP
    *internal_port*; raise :class:`MalformedResponse` if it is not one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedResponse("not bytes")
    data = bytes(data)
    if len(data) > MAX_PACKET:
        raise MalformedResponse(f"PCP response of {len(data)} bytes")
    if len(data) >= 8 and data[0] == 0:
        # A NAT-PMP gateway: "unsupported version" (opcode 128, or 0 before RFC erratum 3618)
        _, opcode, result, epoch = struct.unpack_from("!BBHI", data)
        if result == 1 and opcode in (0, 128, 128 + OP_MAP):
            return MapResponse(0, UNSUPP_VERSION, 0, epoch, 0, 0, None)
        raise MalformedResponse("a NAT-PMP packet in answer to PCP")
    if len(data) < HEADER:
        raise MalformedResponse(f"PCP response of {len(data)} bytes")
    version, r_opcode, _, result, lifetime, epoch = struct.unpack_from("!BBBBII", data)
    if version != VERSION:
        if result == UNSUPP_VERSION and r_opcode & 0x80:
            return MapResponse(version, result, lifetime, epoch, 0, 0, None)
        raise MalformedResponse(f"PCP response of version {version}")
    if not r_opcode & 0x80:
        raise MalformedResponse("a PCP request, not a response")
    if r_opcode & 0x7F != OP_MAP:
        raise MalformedResponse(f"PCP response to opcode {r_opcode & 0x7F}, not MAP")
    if len(data) % 4:
        raise MalformedResponse("PCP response length not a multiple of 4")
    if len(data) < HEADER + MAP_PAYLOAD:
        if result == SUCCESS:
            raise MalformedResponse("PCP MAP response without its payload")
        return MapResponse(version, result, lifetime, epoch, 0, 0, None)
    _check_options(data, HEADER + MAP_PAYLOAD)
    got_nonce = data[HEADER:HEADER + 12]
    protocol, internal, external = struct.unpack_from("!B3xHH", data, HEADER + 12)
    if got_nonce != bytes(nonce):
        raise MalformedResponse("PCP response with another mapping nonce")
    if protocol != PROTO_TCP or internal != internal_port:
        raise MalformedResponse("PCP response for another protocol or port")
    address = unpack_address(data[HEADER + 20:HEADER + 36])
    if result == SUCCESS and (external == 0 and lifetime != 0):
        raise MalformedResponse("PCP mapping to external port 0")
    return MapResponse(version, result, lifetime, epoch, internal, external,
                       address if result == SUCCESS else None)


def epoch_lost_state(prev_epoch: int, prev_time: float, epoch: int, now: float) -> bool:
    """True when the server's epoch says it lost its state (RFC 6887 8.5)."""
    if epoch + 1 < prev_epoch:
        return True
    client_delta = now - prev_time
    server_delta = epoch - prev_epoch
    return (client_delta + 2 < server_delta - server_delta / 16
            or server_delta + 2 < client_delta - client_delta / 16)
