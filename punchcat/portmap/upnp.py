"""UPnP Internet Gateway Device, sans I/O: SSDP search, the device
description, and SOAP calls to WANIPConnection / WANPPPConnection.

Builders return the bytes to send; parsers take the bytes a router sent and
raise :class:`MalformedResponse` for anything they cannot trust.  The router
is treated as hostile: every input is bounded in size, XML with a DOCTYPE or
an entity declaration is refused before anything is expanded, element depth
and count are bounded, and URLs must be plain ``http``.  A SOAP fault is a
well-formed answer: :func:`parse_soap_response` returns it as
:class:`SoapFault`, it does not raise.
"""

from __future__ import annotations

import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.parsers import expat
from xml.sax.saxutils import escape as xml_escape

from .common import MalformedResponse

SSDP_GROUP = "239.255.255.250"
SSDP_PORT = 1900
IGD1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
IGD2 = "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
WANIP1 = "urn:schemas-upnp-org:service:WANIPConnection:1"
WANIP2 = "urn:schemas-upnp-org:service:WANIPConnection:2"
WANPPP1 = "urn:schemas-upnp-org:service:WANPPPConnection:1"
#: What to search for, in one datagram each.
SEARCH_TARGETS = (IGD1, IGD2, WANIP1, WANIP2, WANPPP1)

MAX_SSDP = 2048
MAX_DESCRIPTION = 128 * 1024
MAX_SOAP = 16 * 1024
MAX_HEADER = 8192
MAX_XML_DEPTH = 32
MAX_XML_ELEMENTS = 4096
MAX_VALUE = 512

DESCRIPTION = "punchcat"

#: UPnP error codes of the WANIPConnection service.
FAULTS = {
    401: "Invalid Action", 402: "Invalid Args", 501: "Action Failed",
    606: "Action not authorized", 713: "SpecifiedArrayIndexInvalid",
    714: "NoSuchEntryInArray", 715: "WildCardNotPermittedInSrcIP",
    716: "WildCardNotPermittedInExtPort", 718: "ConflictInMappingEntry",
    724: "SamePortValuesRequired", 725: "OnlyPermanentLeasesSupported",
    726: "RemoteHostOnlySupportsWildcard", 727: "ExternalPortOnlySupportsWildcard",
    728: "NoPortMapsAvailable", 729: "ConflictWithOtherMechanisms",
    732: "WildCardNotPermittedInIntPort",
}
CONFLICT = 718
CONFLICT_OTHER = 729          # e.g. the router itself uses the port
ONLY_PERMANENT = 725
#: No such mapping: for a deletion, or a lookup before one, the port is
#: already free, as good as success.
NO_SUCH_ENTRY = 714


# -- SSDP --------------------------------------------------------------------

def msearch(target: str, mx: int | None = 1, host: str = f"{SSDP_GROUP}:{SSDP_PORT}") -> bytes:
    """An M-SEARCH for *target*; for a unicast search (UPnP 1.1) pass the
    gateway as *host* and ``mx=None``."""
    lines = ["M-SEARCH * HTTP/1.1", f"HOST: {host}", 'MAN: "ssdp:discover"']
    if mx is not None:
        lines.append(f"MX: {mx}")
    lines += [f"ST: {target}", "USER-AGENT: Linux UPnP/1.1 punchcat/1", "", ""]
    return "\r\n".join(lines).encode("ascii")


@dataclass(frozen=True)
class SsdpResponse:
    st: str
    location: str
    server: str
    usn: str


def _split_headers(block: bytes) -> tuple[str, dict[str, str]]:
    """The first line and the headers (names lower-cased) of an HTTP head."""
    text = block.decode("latin-1")
    lines = re.split(r"\r?\n", text)
    if len(lines) > 100:
        raise MalformedResponse("too many header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or any(c in name for c in " \t"):
            raise MalformedResponse("a header line without a name")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def parse_ssdp_response(data: bytes) -> SsdpResponse:
    """Parse one SSDP search response (an HTTP 200 in a datagram)."""
    data = bytes(data)
    if len(data) > MAX_SSDP:
        raise MalformedResponse(f"SSDP datagram of {len(data)} bytes")
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    first, headers = _split_headers(head)
    if not re.fullmatch(r"HTTP/1\.[01] 200( .*)?", first):
        raise MalformedResponse("not an SSDP search response")
    location = headers.get("location", "")
    if not location:
        raise MalformedResponse("SSDP response without LOCATION")
    split_http_url(location)
    return SsdpResponse(headers.get("st", ""), location, headers.get("server", ""),
                        headers.get("usn", ""))


def split_http_url(url: str) -> tuple[str, int, str]:
    """(host, port, path with query) of a plain-http URL, or MalformedResponse."""
    if len(url) > 1024 or any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise MalformedResponse("URL too long or with spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 80
    except ValueError as e:
        raise MalformedResponse(f"bad URL: {e}") from None
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise MalformedResponse("not an http URL")
    if parts.username is not None or parts.password is not None:
        raise MalformedResponse("URL with credentials")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


# -- HTTP --------------------------------------------------------------------

@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def http_get(url: str) -> bytes:
    host, port, path = split_http_url(url)
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"User-Agent: Linux UPnP/1.1 punchcat/1\r\n\r\n").encode("ascii")


def _dechunk(data: bytes, limit: int) -> bytes | None:
    """The body of a chunked transfer, or None while incomplete."""
    body = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            if len(data) - pos > 64:
                raise MalformedResponse("chunk size line too long")
            return None
        size_text = data[pos:end].split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size_text):
            raise MalformedResponse("bad chunk size")
        size = int(size_text, 16)
        if len(body) + size > limit:
            raise MalformedResponse("chunked body too large")
        pos = end + 2
        if size == 0:
            return bytes(body)          # trailers, if any, are ignored
        if len(data) < pos + size + 2:
            return None
        body += data[pos:pos + size]
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise MalformedResponse("chunk not followed by CRLF")
        pos += size + 2


def parse_http_response(data: bytes, eof: bool, limit: int = MAX_SOAP) -> HttpResponse | None:
    """Parse an HTTP/1.x response read so far: None while more is needed
    (and *eof* is false), the response once complete."""
    data = bytes(data)
    if len(data) > limit + MAX_HEADER:
        raise MalformedResponse(f"HTTP response over {limit + MAX_HEADER} bytes")
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        if eof or len(data) > MAX_HEADER:
            raise MalformedResponse("HTTP response head truncated or too long")
        return None
    if match.start() > MAX_HEADER:
        raise MalformedResponse("HTTP response head too long")
    first, headers = _split_headers(data[:match.start()])
    status_match = re.fullmatch(r"HTTP/1\.[01] (\d{3})(?: (.*))?", first)
    if not status_match:
        raise MalformedResponse("not an HTTP/1.x status line")
    status, reason = int(status_match.group(1)), status_match.group(2) or ""
    rest = data[match.end():]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest, limit)
        if body is None:
            if eof:
                raise MalformedResponse("chunked body truncated")
            return None
    elif "content-length" in headers:
        text = headers["content-length"]
        if not re.fullmatch(r"\d{1,9}", text) or int(text) > limit:
            raise MalformedResponse("bad or too large Content-Length")
        need = int(text)
        if len(rest) < need:
            if eof:
                raise MalformedResponse("HTTP body shorter than its Content-Length")
            return None
        body = rest[:need]
    else:
        if not eof:
            return None
        body = rest
    if len(body) > limit:
        raise MalformedResponse("HTTP body too large")
    return HttpResponse(status, reason, headers, body)


# -- XML ---------------------------------------------------------------------

def _local(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def parse_xml(data: bytes, limit: int) -> ET.Element:
    """Parse *data* into an ElementTree whose tags are local names (prefixes
    dropped), refusing DOCTYPE, entity and notation declarations, and
    bounding size, depth and element count."""
    data = bytes(data)
    if len(data) > limit:
        raise MalformedResponse(f"XML document of {len(data)} bytes")
    builder = ET.TreeBuilder()
    depth = count = 0

    def refuse(*_args):
        raise MalformedResponse("XML with a DOCTYPE, entity or notation declaration")

    def start(name, attrs):
        nonlocal depth, count
        depth += 1
        count += 1
        if depth > MAX_XML_DEPTH or count > MAX_XML_ELEMENTS:
            raise MalformedResponse("XML nested too deep or too many elements")
        builder.start(_local(name), {})

    def end(name):
        nonlocal depth
        depth -= 1
        builder.end(_local(name))

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        root = builder.close()
    except MalformedResponse:
        raise
    except (expat.ExpatError, ValueError, LookupError, UnicodeError, AssertionError) as e:
        raise MalformedResponse(f"not well-formed XML: {e}") from None
    if root is None:
        raise MalformedResponse("empty XML document")
    return root


def _text(element: ET.Element | None) -> str:
    if element is None:
        return ""
    return "".join(element.itertext()).strip()[:MAX_VALUE]


# -- device description ------------------------------------------------------

#: A service type's version: ASCII digits (``str.isdigit`` and ``int`` also
#: take other scripts' digits, and the type goes into a SOAPAction header,
#: where a CR or LF would start a header of the router's choosing).
_VERSION = re.compile(r"[0-9]{1,3}")


@dataclass(frozen=True)
class Service:
    service_type: str
    control_url: str             # absolute http URL

    @property
    def version(self) -> int:
        tail = self.service_type.rsplit(":", 1)[-1]
        return int(tail) if _VERSION.fullmatch(tail) else 1


@dataclass(frozen=True)
class Description:
    friendly_name: str
    manufacturer: str
    model: str
    services: tuple[Service, ...] = field(default=())   # best first


def _rank(service: Service) -> tuple:
    kind = service.service_type.split(":")[-2]
    return (0 if kind == "WANIPConnection" else 1, -service.version)


def parse_description(data: bytes, location: str) -> Description:
    """Find the WANIPConnection / WANPPPConnection services in a device
    description fetched from *location*; their control URLs are made
    absolute (against URLBase when present) and must be plain http."""
    root = parse_xml(data, MAX_DESCRIPTION)
    if root.tag != "root":
        raise MalformedResponse("a device description's root element is <root>")
    base = _text(root.find("URLBase")) or location
    device = root.find("device")
    services = []
    for element in root.iter("service"):
        service_type = _text(element.find("serviceType"))
        kind = service_type.split(":", 4)
        if (len(kind) != 5 or kind[:3] != ["urn", "schemas-upnp-org", "service"]
                or kind[3] not in ("WANIPConnection", "WANPPPConnection")):
            continue
        if not _VERSION.fullmatch(kind[4]):
            raise MalformedResponse(f"a {kind[3]} service of version {kind[4][:20]!r}")
        control = _text(element.find("controlURL"))
        if not control:
            continue
        try:
            url = urllib.parse.urljoin(base, control)
        except ValueError:
            continue
        try:
            split_http_url(url)
        except MalformedResponse:
            continue
        services.append(Service(service_type, url))
    if not services:
        raise MalformedResponse("no WANIPConnection or WANPPPConnection service described")
    services.sort(key=_rank)
    return Description(_text(device.find("friendlyName")) if device is not None else "",
                       _text(device.find("manufacturer")) if device is not None else "",
                       _text(device.find("modelName")) if device is not None else "",
                       tuple(services))


# -- SOAP --------------------------------------------------------------------

def soap_request(service: Service, action: str, args: list[tuple[str, object]]) -> bytes:
    """The whole HTTP POST calling *action* on *service*."""
    host, port, path = split_http_url(service.control_url)
    body = ("<?xml version=\"1.0\"?>\r\n"
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" "
            "s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\">"
            f"<s:Body><u:{action} xmlns:u=\"{xml_escape(service.service_type)}\">"
            + "".join(f"<{name}>{xml_escape(str(value))}</{name}>" for name, value in args)
            + f"</u:{action}></s:Body></s:Envelope>\r\n").encode("utf-8")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: text/xml; charset=\"utf-8\"\r\n"
            f"SOAPAction: \"{service.service_type}#{action}\"\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            "User-Agent: Linux UPnP/1.1 punchcat/1\r\n\r\n").encode("ascii")
    return head + body


def get_external_ip_request(service: Service) -> bytes:
    return soap_request(service, "GetExternalIPAddress", [])


def _mapping_args(external_port: int, internal_port: int, client: str, lease: int,
                  description: str) -> list[tuple[str, object]]:
    return [("NewRemoteHost", ""), ("NewExternalPort", external_port), ("NewProtocol", "TCP"),
            ("NewInternalPort", internal_port), ("NewInternalClient", client),
            ("NewEnabled", 1), ("NewPortMappingDescription", description),
            ("NewLeaseDuration", lease)]


def add_port_mapping_request(service: Service, internal_port: int, client: str, lease: int,
                             external_port: int | None = None,
                             description: str = DESCRIPTION) -> bytes:
    """AddPortMapping for TCP, external port = internal unless given; *lease*
    in seconds (0: permanent, for routers that answer 725)."""
    ext = internal_port if external_port is None else external_port
    return soap_request(service, "AddPortMapping",
                        _mapping_args(ext, internal_port, client, lease, description))


def add_any_port_mapping_request(service: Service, internal_port: int, client: str,
                                 lease: int, description: str = DESCRIPTION) -> bytes:
    """AddAnyPortMapping (IGD v2): the router picks the external port if the
    internal one is taken, and answers it as NewReservedPort."""
    return soap_request(service, "AddAnyPortMapping",
                        _mapping_args(internal_port, internal_port, client, lease, description))


def delete_port_mapping_request(service: Service, external_port: int) -> bytes:
    return soap_request(service, "DeletePortMapping",
                        [("NewRemoteHost", ""), ("NewExternalPort", external_port),
                         ("NewProtocol", "TCP")])


def get_specific_port_mapping_entry_request(service: Service, external_port: int) -> bytes:
    """GetSpecificPortMappingEntry for TCP *external_port*: who it forwards to."""
    return soap_request(service, "GetSpecificPortMappingEntry",
                        [("NewRemoteHost", ""), ("NewExternalPort", external_port),
                         ("NewProtocol", "TCP")])


@dataclass(frozen=True)
class SoapFault:
    code: int | None             # UPnP errorCode, None when the router gave none
    description: str             # router text: escape before showing it

    def __str__(self) -> str:
        name = FAULTS.get(self.code, "") if self.code is not None else ""
        code = f"{self.code} " if self.code is not None else ""
        text = self.description or name
        return f"{code}{text}".strip() or "unknown fault"


@dataclass(frozen=True)
class SoapResult:
    values: dict[str, str]       # output arguments (empty on a fault)
    fault: SoapFault | None = None

    @property
    def ok(self) -> bool:
        return self.fault is None


def parse_soap_response(response: HttpResponse, action: str) -> SoapResult:
    """The output arguments of *action*, or the fault the router answered."""
    if response.status == 200:
        root = parse_xml(response.body, MAX_SOAP)
        for element in root.iter(f"{action}Response"):
            values = {}
            for child in element:
                if len(values) >= 32:
                    break
                values[child.tag] = _text(child)
            return SoapResult(values)
        raise MalformedResponse(f"no {action}Response in the SOAP answer")
    fault = None
    if response.body:
        try:
            root = parse_xml(response.body, MAX_SOAP)
        except MalformedResponse:
            root = None
        if root is not None:
            error = next(root.iter("UPnPError"), None)
            if error is not None:
                code_text = _text(error.find("errorCode"))
                code = int(code_text) if re.fullmatch(r"\d{1,4}", code_text) else None
                fault = SoapFault(code, _text(error.find("errorDescription")))
            elif next(root.iter("Fault"), None) is not None:
                fault = SoapFault(None, _text(next(root.iter("faultstring"), None)))
    if fault is None:
        fault = SoapFault(None, f"HTTP {response.status} {response.reason}"[:MAX_VALUE])
    return SoapResult({}, fault)
