"""Addresses from the command line: parsed, resolved, and the ``-L`` socket.

Everything here runs before any packet is sent, and every failure is a
:class:`~punchcat.errors.UsageError` (status 2).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from .errors import UsageError

#: How long -c waits for its target to accept a session.
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Address:
    """A resolved host: its address family and numeric address."""

    family: int
    host: str

    @property
    def version(self) -> int:
        return 6 if self.family == socket.AF_INET6 else 4


@dataclass(frozen=True)
class Endpoint:
    """A resolved ``HOST:PORT`` (the ``-c`` target, the ``-L`` address)."""

    family: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else \
            f"{self.host}:{self.port}"


def split_endpoint(spec: str, option: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (HOST may be ``[v6]``); HOST defaults to 127.0.0.1."""
    host, sep, port = spec.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not host or ":" in host:
        raise UsageError(f"{option} {spec}: expected [HOST:]PORT (an IPv6 HOST in brackets)")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) <= 65535:
        raise UsageError(f"{option} {spec}: the port must be a number from 1 to 65535")
    return host, int(port)


def resolve(host: str, what: str = "PEER", family: int = socket.AF_UNSPEC) -> Address:
    """The address family and numeric address of *host* (exit 2 if unknown).

    A name with addresses of both families resolves to IPv4, the same choice
    on both sides; ``-4``/``-6`` choose.
    """
    if re.fullmatch(r"[0-9.]+", host) or ":" in host:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise UsageError(f"{what} {host} is not a valid IP address") from None
        scope = getattr(address, "scope_id", None)
        if scope is not None and not _known_interface(scope):
            raise UsageError(f"{what} {host}: this host has no network interface {scope!r}")
        wanted = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(family)
        if wanted and address.version != wanted:
            raise UsageError(f"-{wanted} was given but {what} {host} is an "
                             f"IPv{address.version} address")
        return Address(socket.AF_INET if address.version == 4 else socket.AF_INET6, str(address))
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot resolve {what} {host}: {reason}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)   # IPv4 first
    found_family, _, _, _, sockaddr = infos[0]
    return Address(found_family, sockaddr[0])


def is_own_address(address: Address) -> bool:
    """Whether *address* belongs to this host (it can be bound here)."""
    sock = socket.socket(address.family, socket.SOCK_DGRAM)
    try:
        sock.bind((address.host, 0))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _known_interface(scope: str) -> bool:
    """An IPv6 zone (``%eth0`` or ``%2``) names an interface of this host."""
    if scope.isascii() and scope.isdigit():
        return any(index == int(scope) for index, _name in socket.if_nameindex())
    try:
        socket.if_nametoindex(scope)
        return True
    except (OSError, ValueError, UnicodeError):
        return False


#: The transit relay's port when --relay names none (its documented default).
RELAY_PORT = 4001


def relay_endpoint(spec: str) -> Endpoint:
    """``--relay HOST[:PORT]`` (an IPv6 HOST in brackets), resolved."""
    if re.fullmatch(r"\[[^\]]*\]|[^:\[\]]+", spec):      # a host alone
        host, port = spec.strip("[]"), RELAY_PORT
    else:
        host, port = split_endpoint(spec, "--relay")
    if not host:
        raise UsageError(f"--relay {spec}: expected HOST[:PORT] (an IPv6 HOST in brackets)")
    address = resolve(host, what="--relay host")
    return Endpoint(address.family, address.host, port)


def endpoint(spec: str, option: str, what: str) -> Endpoint:
    """Parse and resolve ``[HOST:]PORT`` given to *option*."""
    host, port = split_endpoint(spec, option)
    address = resolve(host, what=what)
    return Endpoint(address.family, address.host, port)


def listen_socket(where: Endpoint) -> socket.socket:
    """Bind and listen on *where* now, before any punching (exit 2 if taken)."""
    sock = socket.socket(where.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((where.host, where.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {where}: {exc.strerror}") from None
    return sock
