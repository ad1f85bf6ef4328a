"""NAT-PMP (RFC 6886), sans I/O: build requests, parse responses.

Only what punchcat needs: the external address request and TCP mapping
requests (a lifetime of 0 deletes).  A response is a :class:`AddressResponse`
or a :class:`MapResponse` whatever its result code; anything that is not a
NAT-PMP response raises :class:`MalformedResponse`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .common import MalformedResponse

PORT = 5351
VERSION = 0
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
#: Responses are 8, 12 or 16 bytes; read at most this much.
MAX_RESPONSE = 1100

SUCCESS = 0
UNSUPPORTED_VERSION = 1
NOT_AUTHORIZED = 2
NETWORK_FAILURE = 3
OUT_OF_RESOURCES = 4
UNSUPPORTED_OPCODE = 5
RESULT_TEXT = {
    SUCCESS: "success",
    UNSUPPORTED_VERSION: "unsupported version",
    NOT_AUTHORIZED: "not authorized (mapping disabled or refused)",
    NETWORK_FAILURE: "network failure (the router has no external address)",
    OUT_OF_RESOURCES: "out of resources",
    UNSUPPORTED_OPCODE: "unsupported opcode",
}


def result_text(code: int) -> str:
    return RESULT_TEXT.get(code, f"unknown result code {code}")


@dataclass(frozen=True)
class AddressResponse:
    result: int
    epoch: int
    address: str | None          # None unless result is SUCCESS

    @property
    def ok(self) -> bool:
        return self.result == SUCCESS


@dataclass(frozen=True)
class MapResponse:
    result: int
    epoch: int
    opcode: int                  # OP_MAP_TCP or OP_MAP_UDP
    internal_port: int
    external_port: int
    lifetime: int

    @property
    def ok(self) -> bool:
        return self.result == SUCCESS


def external_address_request() -> bytes:
    return struct.pack("!BB", VERSION, OP_EXTERNAL_ADDRESS)


def map_tcp_request(internal_port: int, external_port: int, lifetime: int) -> bytes:
    """Map TCP *internal_port*, suggesting *external_port*, for *lifetime*
    seconds; lifetime 0 (with external port 0) deletes the mapping."""
    if not 0 < internal_port < 65536 or not 0 <= external_port < 65536:
        raise ValueError("port out of range")
    if not 0 <= lifetime < 2**32:
        raise ValueError("lifetime out of range")
    return struct.pack("!BBHHHI", VERSION, OP_MAP_TCP, 0, internal_port, external_port, lifetime)


def parse_response(data: bytes) -> AddressResponse | MapResponse:
    """Parse one datagram from the gateway's port 5351."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedResponse("not bytes")
    data = bytes(data)
    if len(data) > MAX_RESPONSE:
        raise MalformedResponse(f"NAT-PMP response of {len(data)} bytes")
    if len(data) < 8:
        raise MalformedResponse(f"NAT-PMP response of {len(data)} bytes")
    version, opcode, result, epoch = struct.unpack_from("!BBHI", data)
    if version != VERSION:
        raise MalformedResponse(f"NAT-PMP response of version {version}")
    if opcode == 0 and result == UNSUPPORTED_VERSION:
        opcode = 128            # RFC 6886 before erratum 3618
    if opcode < 128:
        raise MalformedResponse(f"a NAT-PMP request (opcode {opcode}), not a response")
    op = opcode - 128
    if op == OP_EXTERNAL_ADDRESS:
        if result != SUCCESS:
            return AddressResponse(result, epoch, None)
        if len(data) < 12:
            raise MalformedResponse("NAT-PMP address response too short")
        return AddressResponse(result, epoch, str(ipaddress.IPv4Address(data[8:12])))
    if op in (OP_MAP_UDP, OP_MAP_TCP):
        if len(data) < 16:
            if result == SUCCESS:
                raise MalformedResponse("NAT-PMP mapping response too short")
            return MapResponse(result, epoch, op, 0, 0, 0)
        internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
        if result == SUCCESS and (internal == 0 or (external == 0 and lifetime != 0)):
            raise MalformedResponse("NAT-PMP mapping response with port 0")
        return MapResponse(result, epoch, op, internal, external, lifetime)
    raise MalformedResponse(f"NAT-PMP response with unknown opcode {opcode}")


def epoch_lost_state(prev_epoch: int, prev_time: float, epoch: int, now: float) -> bool:
    """True when the gateway's epoch says it lost its mappings since the
    previous response (rebooted): RFC 6886 section 3.6, the epoch must grow
    at least 7/8 as fast as local time, less 2 seconds of slack."""
    if epoch < prev_epoch:
        return True
    return epoch + 2 < prev_epoch + (now - prev_time) * 7 / 8
