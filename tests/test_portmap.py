"""Unit tests of the portmap codecs (fed bytes, no network), with hypothesis
fuzzing of every parser: garbage gives MalformedResponse and nothing else."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from conftest import wait_for
from punchcat.portmap import natpmp, pcp, upnp
from punchcat.portmap.client import PortMapper, whoami
from punchcat.portmap.common import MalformedResponse, escape
from punchcat.portmap.engine import Engine
from punchcat.portmap.local import default_gateways, default_gateways_v6, global_ipv6_addresses
from punchcat.portmap.results import Refusal

#: PUNCHCAT_FUZZ_EXAMPLES=5000 for a longer run.
FUZZ = settings(max_examples=int(os.environ.get("PUNCHCAT_FUZZ_EXAMPLES", 400)), deadline=None)


def never_else(parse, *args):
    """Call *parse*; anything but a result or MalformedResponse fails the test."""
    try:
        return parse(*args)
    except MalformedResponse:
        return None


# -- NAT-PMP -----------------------------------------------------------------

def test_natpmp_requests():
    assert natpmp.external_address_request() == b"\x00\x00"
    assert natpmp.map_tcp_request(31234, 31234, 120) == bytes.fromhex("0002 0000 7a02 7a02 00000078".replace(" ", ""))
    assert natpmp.map_tcp_request(31234, 0, 0) == bytes.fromhex("0002 0000 7a02 0000 00000000".replace(" ", ""))
    with pytest.raises(ValueError):
        natpmp.map_tcp_request(0, 1, 1)


def test_natpmp_address_response():
    r = natpmp.parse_response(struct.pack("!BBHI", 0, 128, 0, 77) + bytes([93, 184, 216, 34]))
    assert r == natpmp.AddressResponse(0, 77, "93.184.216.34") and r.ok


def test_natpmp_map_response():
    r = natpmp.parse_response(struct.pack("!BBHIHHI", 0, 130, 0, 9, 31234, 31240, 120))
    assert r == natpmp.MapResponse(0, 9, natpmp.OP_MAP_TCP, 31234, 31240, 120)


def test_natpmp_error_responses_are_values():
    r = natpmp.parse_response(struct.pack("!BBHI", 0, 130, 2, 9))
    assert isinstance(r, natpmp.MapResponse) and r.result == natpmp.NOT_AUTHORIZED and not r.ok
    r = natpmp.parse_response(struct.pack("!BBHI", 0, 128, 3, 9))
    assert r == natpmp.AddressResponse(3, 9, None)
    assert "network failure" in natpmp.result_text(3)
    assert "unknown" in natpmp.result_text(99)


def test_natpmp_unsupported_version_both_forms():
    for opcode in (0, 128):       # RFC 6886 as printed, and after erratum 3618
        r = natpmp.parse_response(struct.pack("!BBHI", 0, opcode, 1, 5))
        assert isinstance(r, natpmp.AddressResponse) and r.result == natpmp.UNSUPPORTED_VERSION


@pytest.mark.parametrize("data", [
    b"", b"\x00\x80", b"\x00\x80\x00\x00\x00\x00\x00",                    # short
    struct.pack("!BBHI", 1, 128, 0, 0) + b"\x01\x02\x03\x04",            # version 1
    struct.pack("!BBHI", 0, 2, 0, 0) + b"\0" * 8,                        # a request
    struct.pack("!BBHI", 0, 140, 0, 0) + b"\0" * 8,                      # unknown opcode
    struct.pack("!BBHI", 0, 128, 0, 0) + b"\x01\x02",                     # address cut
    struct.pack("!BBHIHH", 0, 130, 0, 0, 1, 2),                          # mapping cut
    struct.pack("!BBHIHHI", 0, 130, 0, 0, 0, 5, 120),                    # internal port 0
    struct.pack("!BBHIHHI", 0, 130, 0, 0, 5, 0, 120),                    # external 0, lifetime
    b"\0\x80\0\0" + b"\0" * 2000,                                        # oversized
])
def test_natpmp_garbage(data):
    with pytest.raises(MalformedResponse):
        natpmp.parse_response(data)


def test_natpmp_epoch():
    assert not natpmp.epoch_lost_state(100, 1000.0, 160, 1060.0)
    assert natpmp.epoch_lost_state(100, 1000.0, 5, 1060.0)          # went back: rebooted
    assert natpmp.epoch_lost_state(100, 1000.0, 110, 1100.0)        # grew far too slowly
    assert not natpmp.epoch_lost_state(100, 1000.0, 186, 1100.0)    # 7/8 of 100 s, less 2


@FUZZ
@given(st.binary(max_size=64))
def test_natpmp_fuzz(data):
    r = never_else(natpmp.parse_response, data)
    if r is not None:
        assert isinstance(r, (natpmp.AddressResponse, natpmp.MapResponse))


@FUZZ
@given(st.binary(min_size=16, max_size=16), st.integers(0, 15), st.integers(0, 255))
def test_natpmp_fuzz_mutated(raw, position, value):
    good = bytearray(struct.pack("!BBHIHHI", 0, 130, 0, 9, 31234, 31234, 120))
    good[position] = value
    never_else(natpmp.parse_response, bytes(good))
    never_else(natpmp.parse_response, raw)


# -- PCP ---------------------------------------------------------------------

NONCE = bytes(range(12))


def pcp_response(result=0, lifetime=120, epoch=42, nonce=NONCE, proto=6, internal=31234,
                 external=31234, address="93.184.216.34", version=2, opcode=0x81, tail=b""):
    return (struct.pack("!BBBBII", version, opcode, 0, result, lifetime, epoch) + b"\0" * 12
            + nonce + struct.pack("!B3xHH", proto, internal, external)
            + pcp.pack_address(address) + tail)


def test_pcp_map_request_layout():
    req = pcp.map_request("192.168.1.2", 31234, NONCE, 120)
    assert len(req) == 60
    assert req[:4] == b"\x02\x01\x00\x00"
    assert struct.unpack("!I", req[4:8])[0] == 120
    assert req[8:24] == b"\0" * 10 + b"\xff\xff" + bytes([192, 168, 1, 2])
    assert req[24:36] == NONCE
    assert req[36] == 6 and req[37:40] == b"\0\0\0"
    assert struct.unpack("!HH", req[40:44]) == (31234, 31234)           # suggested = internal
    assert req[44:60] == b"\0" * 10 + b"\xff\xff" + b"\0\0\0\0"            # any IPv4 address
    delete = pcp.map_request("192.168.1.2", 31234, NONCE, 0, 0)
    assert struct.unpack("!I", delete[4:8])[0] == 0
    with pytest.raises(ValueError):
        pcp.map_request("192.168.1.2", 31234, b"short", 120)


def test_pcp_addresses():
    assert pcp.unpack_address(pcp.pack_address("10.1.2.3")) == "10.1.2.3"
    assert pcp.unpack_address(pcp.pack_address("2001:db8::1")) == "2001:db8::1"


def test_pcp_success():
    r = pcp.parse_map_response(pcp_response(external=31240), NONCE, 31234)
    assert r == pcp.MapResponse(2, 0, 120, 42, 31234, 31240, "93.184.216.34") and r.ok


def test_pcp_error_is_a_value():
    r = pcp.parse_map_response(pcp_response(result=2, lifetime=30), NONCE, 31234)
    assert r.result == pcp.NOT_AUTHORIZED and r.external_address is None
    assert pcp.result_text(2) == "NOT_AUTHORIZED"
    # an error may come without the MAP payload
    r = pcp.parse_map_response(struct.pack("!BBBBII", 2, 0x81, 0, 3, 0, 0) + b"\0" * 12, NONCE, 1)
    assert r.result == 3


def test_pcp_natpmp_gateway_answers_unsupported_version():
    for opcode in (0, 128, 129):
        r = pcp.parse_map_response(struct.pack("!BBHI", 0, opcode, 1, 7), NONCE, 31234)
        assert r.version == 0 and r.result == pcp.UNSUPP_VERSION


def test_pcp_options_are_skipped_but_checked():
    option = struct.pack("!BBH", 0x12, 0, 5) + b"abcde\0\0\0"
    assert pcp.parse_map_response(pcp_response(tail=option), NONCE, 31234).ok
    with pytest.raises(MalformedResponse):
        pcp.parse_map_response(pcp_response(tail=struct.pack("!BBH", 1, 0, 40) + b"\0" * 8),
                               NONCE, 31234)


@pytest.mark.parametrize("data", [
    pcp_response(nonce=b"x" * 12),                     # someone else's answer
    pcp_response(internal=31235),                      # another port
    pcp_response(proto=17),                            # UDP
    pcp_response(version=3),                           # unknown version, not an error
    pcp_response(opcode=0x01),                         # a request, not a response
    pcp_response(opcode=0x82),                         # a PEER response
    pcp_response()[:58],                               # not a multiple of 4
    pcp_response()[:40],                               # success without payload
    pcp_response(external=0),                          # external port 0 with a lifetime
    pcp_response(tail=b"\0" * 1100),                   # oversized
    b"", b"\x02", struct.pack("!BBHI", 0, 128, 0, 7),  # short; NAT-PMP success
])
def test_pcp_garbage(data):
    with pytest.raises(MalformedResponse):
        pcp.parse_map_response(data, NONCE, 31234)


def test_pcp_epoch():
    assert not pcp.epoch_lost_state(1000, 50.0, 1060, 110.0)
    assert pcp.epoch_lost_state(1000, 50.0, 10, 110.0)
    assert pcp.epoch_lost_state(1000, 50.0, 1500, 110.0)


@FUZZ
@given(st.binary(max_size=200))
def test_pcp_fuzz(data):
    r = never_else(pcp.parse_map_response, data, NONCE, 31234)
    if r is not None and r.ok:
        assert r.internal_port == 31234


@FUZZ
@given(st.integers(0, 63), st.integers(0, 255), st.binary(max_size=48))
def test_pcp_fuzz_mutated(position, value, tail):
    good = bytearray(pcp_response() + tail)
    good[min(position, len(good) - 1)] = value
    never_else(pcp.parse_map_response, bytes(good), NONCE, 31234)


# -- UPnP: SSDP and URLs -------------------------------------------------------

SSDP_OK = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
           b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
           b"USN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\n"
           b"SERVER: Debian UPnP/1.1 MiniUPnPd/2.3.1\r\n"
           b"LOCATION: http://192.168.7.1:45921/rootDesc.xml\r\n\r\n")


def test_msearch():
    m = upnp.msearch(upnp.IGD1)
    assert m.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert b'MAN: "ssdp:discover"\r\n' in m and b"MX: 1\r\n" in m and m.endswith(b"\r\n\r\n")
    assert b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" in m
    unicast = upnp.msearch(upnp.WANIP2, None, "192.168.1.1:1900")
    assert b"MX" not in unicast and b"HOST: 192.168.1.1:1900" in unicast


def test_ssdp_response():
    r = upnp.parse_ssdp_response(SSDP_OK)
    assert r.location == "http://192.168.7.1:45921/rootDesc.xml"
    assert r.st.endswith("InternetGatewayDevice:1") and "MiniUPnPd" in r.server


@pytest.mark.parametrize("data", [
    b"", b"NOTIFY * HTTP/1.1\r\nLOCATION: http://1.2.3.4/\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nLOCATION: http://1.2.3.4/\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n",                                      # no LOCATION
    b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: https://1.2.3.4/x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: http://user:pw@1.2.3.4/x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: http://1.2.3.4:99999/x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header line\r\nLOCATION: http://1.2.3.4/\r\n\r\n",
    SSDP_OK + b"x" * 3000,
])
def test_ssdp_garbage(data):
    with pytest.raises(MalformedResponse):
        upnp.parse_ssdp_response(data)


def test_split_http_url():
    assert upnp.split_http_url("http://192.168.1.1:5000/ctl/IPConn") == ("192.168.1.1", 5000, "/ctl/IPConn")
    assert upnp.split_http_url("http://192.168.1.1") == ("192.168.1.1", 80, "/")
    for bad in ("http://[::1", "http://a b/", "ftp://1.2.3.4/", "http:///x", "http://1.2.3.4/\x1b[2J"):
        with pytest.raises(MalformedResponse):
            upnp.split_http_url(bad)


@FUZZ
@given(st.binary(max_size=2200))
def test_ssdp_fuzz(data):
    never_else(upnp.parse_ssdp_response, data)


@FUZZ
@given(st.text(max_size=200))
def test_split_http_url_fuzz(text):
    never_else(upnp.split_http_url, text)
    never_else(upnp.parse_ssdp_response,
               b"HTTP/1.1 200 OK\r\nLOCATION: " + text.encode("utf-8", "replace") + b"\r\n\r\n")


# -- UPnP: HTTP ----------------------------------------------------------------

def test_http_content_length_and_incomplete():
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    for cut in range(len(whole)):
        assert upnp.parse_http_response(whole[:cut], eof=False) is None
        with pytest.raises(MalformedResponse):
            upnp.parse_http_response(whole[:cut], eof=True)
    r = upnp.parse_http_response(whole, eof=False)
    assert (r.status, r.reason, r.body, r.headers["content-length"]) == (200, "OK", b"hello", "5")


def test_http_chunked_and_close_delimited():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
    assert upnp.parse_http_response(chunked, eof=False).body == b"hello world"
    assert upnp.parse_http_response(chunked[:-7], eof=False) is None
    plain = b"HTTP/1.0 500 Internal Server Error\n\nbody"
    assert upnp.parse_http_response(plain, eof=False) is None
    assert upnp.parse_http_response(plain, eof=True).body == b"body"


@pytest.mark.parametrize("data", [
    b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFF\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"x" * 9000,
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (upnp.MAX_SOAP + 1),
])
def test_http_garbage(data):
    with pytest.raises(MalformedResponse):
        upnp.parse_http_response(data, eof=True)


@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_http_fuzz(data, eof):
    never_else(upnp.parse_http_response, data, eof, 256)


@FUZZ
@given(st.lists(st.sampled_from([b"HTTP/1.1 200 OK", b"\r\n", b"Content-Length: 3", b"abc",
                                 b"Transfer-Encoding: chunked", b"3", b"0", b";", b"\n", b":"]),
                max_size=20), st.booleans())
def test_http_fuzz_structured(parts, eof):
    data = b"".join(parts)
    never_else(upnp.parse_http_response, data, eof, 64)


# -- UPnP: XML, the device description, SOAP -----------------------------------

ROOT_DESC = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1337">
<specVersion><major>1</major><minor>1</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
<friendlyName>Home&#x202e;&#x9;Router</friendlyName><manufacturer>ACME</manufacturer><modelName>R1</modelName>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType>
<controlURL>/ctl/CmnIfCfg</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType>
<serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>ppp</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IP1</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>/ctl/IPConn</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>ftp://x/y</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"""


def test_description():
    d = upnp.parse_description(ROOT_DESC, "http://192.168.7.1:45921/rootDesc.xml")
    assert [(s.service_type.split(":")[-2:], s.control_url) for s in d.services] == [
        (["WANIPConnection", "2"], "http://192.168.7.1:45921/ctl/IPConn"),
        (["WANIPConnection", "1"], "http://192.168.7.1:45921/ctl/IP1"),
        (["WANPPPConnection", "1"], "http://192.168.7.1:45921/ppp"),
    ]
    assert d.services[0].version == 2
    assert d.friendly_name == "Home\u202e\tRouter" and escape(d.friendly_name) == "Home\\u202e\\x09Router"
    assert (d.manufacturer, d.model) == ("ACME", "R1")


def test_description_url_base():
    doc = ROOT_DESC.replace(b"<specVersion>", b"<URLBase>http://192.168.7.1:5000/</URLBase><specVersion>")
    d = upnp.parse_description(doc, "http://192.168.7.1:45921/rootDesc.xml")
    assert d.services[0].control_url == "http://192.168.7.1:5000/ctl/IPConn"


def test_description_without_wan_service():
    with pytest.raises(MalformedResponse):
        upnp.parse_description(b"<root><device><serviceList/></device></root>", "http://1.2.3.4/")
    with pytest.raises(MalformedResponse):
        upnp.parse_description(b"<notroot/>", "http://1.2.3.4/")


def _with_ip2_version(version: str) -> bytes:
    """ROOT_DESC with the WANIPConnection:2 service's version as *version*
    (every character a character reference, so CR survives the parser)."""
    refs = "".join(f"&#{ord(c)};" for c in version)
    return ROOT_DESC.replace(b"WANIPConnection:2</serviceType><controlURL>/ctl/IPConn",
                             f"WANIPConnection:{refs}</serviceType><controlURL>/ctl/IPConn"
                             .encode())


@pytest.mark.parametrize("version", ["1\r\nX: y", "1\r\nX-Injected", "\u0661", "2\u00b2", "1.0"])
def test_description_with_a_service_version_not_ascii_digits_is_refused(version):
    """The service type goes into the SOAPAction header of every request to
    it: a CR or LF there would start a header of the router's choosing, and
    a non-ASCII digit (which ``str.isdigit`` and ``int`` take) would fail
    the request's encoding, outside the one parse error."""
    with pytest.raises(MalformedResponse):
        upnp.parse_description(_with_ip2_version(version), "http://192.168.7.1:45921/rootDesc.xml")
    assert upnp.Service("urn:schemas-upnp-org:service:WANIPConnection:" + version,
                        "http://1.2.3.4/").version == 1


@FUZZ
@given(st.text(max_size=12))
def test_a_parsed_service_always_builds_a_well_formed_request(version):
    description = never_else(upnp.parse_description, _with_ip2_version(version),
                             "http://192.168.7.1:45921/rootDesc.xml")
    for service in description.services if description else ():
        for request in (upnp.add_port_mapping_request(service, 1, "192.168.7.2", 60),
                        upnp.delete_port_mapping_request(service, 1)):
            head = request.split(b"\r\n\r\n", 1)[0].decode("ascii")
            lines = head.split("\r\n")
            assert not any("\r" in line or "\n" in line for line in lines)
            assert sum(line.startswith("SOAPAction: ") for line in lines) == 1


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i + 1, (b"&lol%s;" % (str(i).encode() if i else b"")) * 10)
                             for i in range(9))
                  + b"]><root>&lol9;</root>")


@pytest.mark.parametrize("doc", [
    BILLION_LAUGHS,
    b'<!DOCTYPE root SYSTEM "http://evil/dtd"><root/>',
    b'<?xml version="1.0"?><!DOCTYPE root [<!ENTITY x SYSTEM "file:///etc/passwd">]><root>&x;</root>',
    b'<!DOCTYPE root [<!ENTITY % p "x">]><root/>',
    # the same DOCTYPE in UTF-16: a byte search for "<!DOCTYPE" would miss it
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY a "b">]><root>&a;</root>'.encode("utf-16"),
    b"<root>" + b"<a>" * 40 + b"</a>" * 40 + b"</root>",                 # too deep
    b"<root>" + b"<a/>" * 5000 + b"</root>",                             # too many elements
    b"<root>&undefined;</root>", b"<root>", b"", b"\xff\xfe\x00", b"<root/><second/>",
    b"<root>" + b"x" * upnp.MAX_DESCRIPTION + b"</root>",
])
def test_xml_refused(doc):
    with pytest.raises(MalformedResponse):
        upnp.parse_xml(doc, upnp.MAX_DESCRIPTION)


@FUZZ
@given(st.binary(max_size=300))
def test_xml_fuzz(data):
    never_else(upnp.parse_xml, data, 256)
    never_else(upnp.parse_description, data, "http://1.2.3.4/")


XML_PARTS = [b"<root>", b"</root>", b"<device>", b"</device>", b"<service>", b"</service>",
             b"<serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>",
             b"<controlURL>", b"</controlURL>", b"/ctl", b"http://1.2.3.4:1/", b"<URLBase>",
             b"</URLBase>", b"&amp;", b"&#0;", b"&#x41;", b"<!DOCTYPE x>", b"<?xml version='1.0'?>",
             b"<s:Envelope xmlns:s='x'>", b"</s:Envelope>", b"<u:UPnPError>", b"</u:UPnPError>",
             b"<errorCode>718</errorCode>", b"<![CDATA[x]]>", b"<!-- c -->", b"\xc3", b"<a b='1'/>"]


@FUZZ
@given(st.lists(st.sampled_from(XML_PARTS), max_size=25))
def test_xml_fuzz_structured(parts):
    doc = b"".join(parts)
    never_else(upnp.parse_description, doc, "http://1.2.3.4/")
    for status in (200, 500):
        never_else(upnp.parse_soap_response,
                   upnp.HttpResponse(status, "", {}, doc), "AddPortMapping")


SERVICE = upnp.Service(upnp.WANIP2, "http://192.168.7.1:45921/ctl/IPConn")


def test_soap_add_port_mapping_request():
    req = upnp.add_port_mapping_request(SERVICE, 31234, "192.168.7.2", 120)
    head, body = req.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.7.1:45921\r\n")
    assert b'SOAPAction: "urn:schemas-upnp-org:service:WANIPConnection:2#AddPortMapping"' in head
    assert f"Content-Length: {len(body)}".encode() in head
    root = upnp.parse_xml(body, 10000)
    args = {e.tag: e.text or "" for e in root.find("Body").find("AddPortMapping")}
    assert args == {"NewRemoteHost": "", "NewExternalPort": "31234", "NewProtocol": "TCP",
                    "NewInternalPort": "31234", "NewInternalClient": "192.168.7.2",
                    "NewEnabled": "1", "NewPortMappingDescription": "punchcat",
                    "NewLeaseDuration": "120"}
    escaped = upnp.add_port_mapping_request(SERVICE, 1, "x", 0, description="<&>")
    assert b"&lt;&amp;&gt;" in escaped


def test_soap_other_requests():
    for req, action in ((upnp.get_external_ip_request(SERVICE), "GetExternalIPAddress"),
                        (upnp.add_any_port_mapping_request(SERVICE, 5, "h", 60), "AddAnyPortMapping"),
                        (upnp.delete_port_mapping_request(SERVICE, 5), "DeletePortMapping")):
        assert f'#{action}"'.encode() in req
        body = req.split(b"\r\n\r\n", 1)[1]
        assert upnp.parse_xml(body, 10000).find("Body").find(action) is not None


def soap_ok(action, values):
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in values.items())
    body = (f'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            f'<s:Body><u:{action}Response xmlns:u="{upnp.WANIP2}">{inner}</u:{action}Response>'
            "</s:Body></s:Envelope>").encode()
    return upnp.HttpResponse(200, "OK", {}, body)


def soap_fault(code, text):
    body = ('<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            "<s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
            '<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
            f"<errorCode>{code}</errorCode><errorDescription>{text}</errorDescription>"
            "</UPnPError></detail></s:Fault></s:Body></s:Envelope>").encode()
    return upnp.HttpResponse(500, "Internal Server Error", {}, body)


def test_soap_responses():
    r = upnp.parse_soap_response(soap_ok("GetExternalIPAddress", {"NewExternalIPAddress": "5.5.5.1"}),
                                 "GetExternalIPAddress")
    assert r.ok and r.values == {"NewExternalIPAddress": "5.5.5.1"}
    r = upnp.parse_soap_response(soap_ok("AddAnyPortMapping", {"NewReservedPort": "31240"}),
                                 "AddAnyPortMapping")
    assert r.values["NewReservedPort"] == "31240"
    r = upnp.parse_soap_response(soap_fault(718, "ConflictInMappingEntry"), "AddPortMapping")
    assert not r.ok and r.fault.code == upnp.CONFLICT and str(r.fault) == "718 ConflictInMappingEntry"
    r = upnp.parse_soap_response(soap_fault(725, "OnlyPermanentLeasesSupported"), "AddPortMapping")
    assert r.fault.code == upnp.ONLY_PERMANENT
    r = upnp.parse_soap_response(upnp.HttpResponse(500, "Oops", {}, b""), "AddPortMapping")
    assert r.fault == upnp.SoapFault(None, "HTTP 500 Oops")
    r = upnp.parse_soap_response(upnp.HttpResponse(404, "Not Found", {}, b"<html>"), "X")
    assert r.fault.code is None and "404" in str(r.fault)
    with pytest.raises(MalformedResponse):      # a 200 without the response element
        upnp.parse_soap_response(soap_ok("Other", {}), "AddPortMapping")


# -- shared helpers ------------------------------------------------------------

def test_escape():
    assert escape("Fritz!Box 7590") == "Fritz!Box 7590"
    assert escape("a\x1b[2Jb\n\x00") == "a\\x1b[2Jb\\x0a\\x00"
    assert escape("evil\u202egnp.exe") == "evil\\u202egnp.exe"
    assert escape(b"\xff") == "\\xff" and escape("back\\slash") == "back\\\\slash"
    assert escape("x" * 300).endswith("…") and len(escape("x" * 300)) == 201


@given(st.text())
def test_escape_is_printable(text):
    assert escape(text).isprintable()


def test_default_gateways(tmp_path):
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t0107A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t0007A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
        "tun0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0\n"
        "garbage line\n")
    assert default_gateways(str(route)) == ["192.168.7.1", "192.168.1.1"]
    assert default_gateways(str(tmp_path / "missing")) == []


def test_default_gateways_v6(tmp_path):
    path = tmp_path / "ipv6_route"
    path.write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00450003     eth0\n"
        "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n")
    assert default_gateways_v6(str(path)) == [("fe80::1", "eth0")]


def test_global_ipv6_addresses(tmp_path):
    path = tmp_path / "if_inet6"
    path.write_text(
        "20010db8000a00000000000000000002 02 40 00 80     eth0\n"      # global, permanent
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"      # link-local
        "00000000000000000000000000000001 01 80 10 80       lo\n"      # loopback
        "fd000000000000000000000000000001 02 40 00 80     eth0\n"      # ULA (scope 0 too)
        "2a010000000000000000000000000005 02 40 00 20     eth0\n"      # deprecated
        "2a010000000000000000000000000006 02 40 00 40     eth0\n")     # tentative
    assert global_ipv6_addresses(str(path)) == [("2001:db8:a::2", "eth0")]


# -- the client without a network ----------------------------------------------

def test_no_gateway_says_so_at_once():
    report = whoami(gateways=[], if_inet6="/nonexistent")
    assert report.public_ipv4 is None
    assert any("no IPv4 default route" in w for w in report.warnings)
    assert "IPv6: no global address on this host" in report.lines


def test_mapper_without_gateway_and_close_is_idempotent():
    mapper = PortMapper([31234], gateways=[]).start()
    status = mapper.wait(2)
    assert status.finished and not status.mappings
    mapper.close()
    mapper.close()
    PortMapper([1]).close()              # never started: nothing to do


def test_engine_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Engine([0])
    with pytest.raises(ValueError):
        Engine([1], protocols=["smtp"])
    with pytest.raises(ValueError):
        Engine([1], lifetime=0)


def test_removal_notes_name_the_ports_removed_not_those_left_to_another_mapper():
    """When the ports roll, the ports in both sets are left to the new
    mapper; the note on removal names the ports the router removed (it used
    to pair the removals' results with the held mappings in order, left ones
    included, and named the wrong ports)."""
    from punchcat.portmap.driver import Held
    from punchcat.portmap.results import Mapping
    old = Engine([1, 2, 3], protocols=["natpmp"], gateways=["192.0.2.1"])
    new = Engine([2, 3, 4], protocols=["natpmp"], gateways=["192.0.2.1"])
    for engine, ports in ((old, [2, 3, 1]), (new, [2, 3])):      # in the order answers came
        for port in ports:
            engine.ledger.held[port] = Held(Mapping("natpmp", "192.0.2.1", port, port, None, 120),
                                            0.0)
    deleted = []

    async def delete(held, deadline):
        deleted.append(held.mapping.internal_port)
        return True
    old.drivers["natpmp"].delete = delete
    asyncio.run(old.remove_all(1))
    assert deleted == [1]
    assert old.snapshot().notes == (
        "NAT-PMP: TCP 2, 3 left mapped for the other mapper that holds or asks for them too",
        "NAT-PMP: removed 1 mapping (TCP 1)")
    assert new.wants("natpmp", "192.0.2.1", 2) and not old.wants("natpmp", "192.0.2.1", 2)



def _rolled_engines(protocol: str, gw: str):
    """When the ports roll: the old engine holds TCP 1, 2, 3 at *gw* (the
    router forwards them), the new one is about to ask for 2, 3, 4.  (Each
    test its own gateway: the engines of earlier tests live on until
    collected, and this process's engines leave each other's ports.)"""
    from punchcat.portmap.driver import Held
    from punchcat.portmap.results import Mapping
    old = Engine([1, 2, 3], protocols=[protocol], gateways=[gw])
    new = Engine([2, 3, 4], protocols=[protocol], gateways=[gw])
    for port in (1, 2, 3):
        old.ledger.held[port] = Held(Mapping(protocol, gw, port, port, None, 120), 0.0)
    return old, new, {1, 2, 3}


@pytest.mark.parametrize("protocol", ["upnp", "natpmp"])
def test_a_port_asked_for_while_the_old_mapper_removes_it_ends_mapped(protocol):
    """punchcat starts the new mapper as it closes the old one
    (traverse.mapped), so the old one's removal of a port in both sets,
    decided before the new one asked, can still be on its way (waiting for
    its turn in the old engine's window, or at the router) when the new one
    maps that port.  It must be carried out first: the other way round (as
    here before), the new mapper counted as mapped two ports the router no
    longer forwarded."""
    import time
    from punchcat.portmap.driver import Held
    from punchcat.portmap.results import Mapping
    gw = {"upnp": "192.0.2.11", "natpmp": "192.0.2.12"}[protocol]
    old, new, table = _rolled_engines(protocol, gw)
    queued = asyncio.Event()        # the router gets to the old one's removals

    async def delete(held, deadline):
        await queued.wait()
        table.discard(held.mapping.external_port)
        return True

    async def map_port(gw, port, deadline, held=None):     # served at once
        table.add(port)
        return Held(Mapping(protocol, gw, port, port, None, 120), time.monotonic())
    old.drivers[protocol].delete = delete
    new.drivers[protocol].map = map_port

    async def main():
        removal = asyncio.ensure_future(old.remove_all(2))
        await asyncio.sleep(0.01)               # the removals are on their way
        mapping = asyncio.ensure_future(new._map_all(protocol, gw))
        await asyncio.sleep(0.01)
        queued.set()
        await asyncio.gather(removal, mapping)
    asyncio.run(main())
    assert {m.internal_port for m in new.snapshot().mappings} == {2, 3, 4}
    assert table == {2, 3, 4}


def test_a_port_the_new_mapper_waits_to_ask_for_is_left_to_it():
    """A request of the new mapper still waiting for its turn in the window
    wants the port as much as one sent: the old mapper leaves it (it used
    to remove it, and the request, sent later, could be carried out first)."""
    import time
    from punchcat.portmap.driver import Held
    from punchcat.portmap.results import Mapping
    gw = "192.0.2.13"
    old, new, table = _rolled_engines("upnp", gw)
    turn = asyncio.Event()          # the new mapper's window frees up
    deleted = []

    async def delete(held, deadline):
        deleted.append(held.mapping.external_port)
        table.discard(held.mapping.external_port)
        return True

    async def map_port(gw, port, deadline, held=None):
        await turn.wait()
        table.add(port)
        return Held(Mapping("upnp", gw, port, port, None, 120), time.monotonic())
    old.drivers["upnp"].delete = delete
    new.drivers["upnp"].map = map_port

    async def main():
        mapping = asyncio.ensure_future(new._map_all("upnp", gw))
        await asyncio.sleep(0.01)               # the new one's requests wait for their turn
        await old.remove_all(1)
        turn.set()
        await mapping
    asyncio.run(main())
    assert deleted == [1]
    assert table == {2, 3, 4}
    assert "UPnP: TCP 2, 3 left mapped for the other mapper that holds or asks for them too" \
        in old.snapshot().notes


# -- pacing: the window and retransmissions, against a loopback router ----------

def test_window_is_first_come_first_served_and_bounded():
    import time
    from punchcat.portmap.exchange import Window

    async def main():
        window = Window(2)
        far = time.monotonic() + 5
        assert await window.acquire(far) and await window.acquire(far)
        order = []

        async def take(name):
            if await window.acquire(time.monotonic() + 1):
                order.append(name)
        waiting = [asyncio.ensure_future(take(n)) for n in "abc"]
        await asyncio.sleep(0.01)
        # a waiter that gives up (deadline) or is cancelled holds no slot
        assert not await window.acquire(time.monotonic() + 0.01)
        waiting[1].cancel()
        window.release()
        window.release()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert order == ["a", "c"]
        window.release()
        window.release()
        assert window.free == 2 and not window._waiters
    asyncio.run(main())


def _loopback_router(service: float, drop_first: bool = False):
    """A UDP 'router' on 127.0.0.1 answering datagrams one at a time, in
    order, each after *service* seconds (echoing them); the datagrams it got."""
    import socket
    import threading
    import time
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    got = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(100)
            except OSError:
                continue
            got.append(data)
            if drop_first and len(got) == 1:
                continue
            time.sleep(service)
            sock.sendto(data, addr)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close():
        stop.set()
        thread.join()
        sock.close()
    return sock.getsockname()[1], got, close


def _ask_four(port: int, pace) -> list:
    import time
    from punchcat.portmap.exchange import udp_exchange

    async def main():
        deadline = time.monotonic() + 3
        ask = [udp_exchange("127.0.0.1", port, lambda _, i=i: b"req%d" % i,
                            lambda d: d, deadline, pace) for i in range(4)]
        return await asyncio.gather(*ask)
    return asyncio.run(main())


def test_a_busy_router_gets_no_copies():
    """Four requests to a router that takes 0.2 s each: the last waits
    0.8 s in its queue.  Paced, none is sent again while the router answers
    older ones; unpaced, those still waiting at 0.25 s are copied (with a
    wide margin, so that a loaded machine still shows the difference)."""
    from punchcat.portmap.exchange import Pace
    port, got, close = _loopback_router(0.2)
    try:
        assert _ask_four(port, Pace()) == [b"req0", b"req1", b"req2", b"req3"]
        assert len(got) == 4
        got.clear()
        _ask_four(port, None)
        # the router reads the copies only after it has answered the originals
        wait_for(lambda: len(got) > 4, timeout=5, what="the router to read a copy")
    finally:
        close()


def test_a_lost_request_is_still_sent_again():
    from punchcat.portmap.exchange import Pace
    port, got, close = _loopback_router(0.05, drop_first=True)
    try:
        assert _ask_four(port, Pace()) == [b"req0", b"req1", b"req2", b"req3"]
        assert len(got) == 5
    finally:
        close()


# -- the UPnP mapping logic against a scripted SOAP server on loopback ---------

def _scripted_upnp(answers, version=1):
    """Map TCP 31234 with the UPnP driver and then run the engine's
    remove_all against a SOAP server on 127.0.0.1 whose answer to each call
    is ``answers(action, lease)``; (the mapping or refusal, the calls made as
    (action, lease), the final status)."""
    import re
    import time
    from punchcat.portmap.upnp_driver import Igd
    calls = []

    async def main():
        async def handle(reader, writer):
            data = b""
            while b"\r\n\r\n" not in data:
                data += await reader.read(4096)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            while len(body) < length:
                body += await reader.read(4096)
            action = re.search(rb'#(\w+)"', head).group(1).decode()
            lease = re.search(rb"<NewLeaseDuration>(\d+)<", body)
            lease = int(lease.group(1)) if lease else None
            calls.append((action, lease))
            response = answers(action, lease)
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                         % (response.status, len(response.body), response.body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        engine = Engine([31234], gateways=["127.0.0.1"])
        service = upnp.Service(upnp.WANIP2 if version == 2 else upnp.WANIP1,
                               f"http://127.0.0.1:{port}/ctl")
        driver = engine.drivers["upnp"]
        driver.igds["127.0.0.1"] = Igd(service, upnp.Description("", "", "", (service,)), "",
                                       "127.0.0.1", "5.5.5.1")
        result = await driver.map("127.0.0.1", 31234, time.monotonic() + 1)
        engine.ledger.record(31234, result)
        await engine.remove_all(1)
        server.close()
        return result, engine.snapshot()

    result, status = asyncio.run(main())
    return result, calls, status


def test_upnp_only_permanent_leases_retries_with_lease_0_and_deletes():
    def answers(action, lease):
        if action == "AddPortMapping" and lease:
            return soap_fault(725, "OnlyPermanentLeasesSupported")
        return soap_ok(action, {})
    result, calls, status = _scripted_upnp(answers)
    assert result.mapping.lifetime == 0 and result.mapping.external_port == 31234
    assert calls == [("AddPortMapping", 120), ("AddPortMapping", 0), ("DeletePortMapping", None)]
    assert any("removed 1 mapping" in n for n in status.notes)


def test_upnp_conflict_on_igd2_uses_add_any_port_mapping():
    def answers(action, lease):
        if action == "AddPortMapping":
            return soap_fault(718, "ConflictInMappingEntry")
        if action == "AddAnyPortMapping":
            return soap_ok(action, {"NewReservedPort": "31299"})
        return soap_ok(action, {})
    result, calls, _ = _scripted_upnp(answers, version=2)
    assert result.mapping.external_port == 31299
    assert calls == [("AddPortMapping", 120), ("AddAnyPortMapping", 120),
                     ("DeletePortMapping", None)]


def test_upnp_conflict_on_igd1_is_reported_escaped():
    result, calls, status = _scripted_upnp(
        lambda action, lease: soap_fault(718, "Conflict\u009b2J\u202e"), version=1)
    assert result == Refusal("refused", "718 Conflict\\x9b2J\\u202e")
    assert calls == [("AddPortMapping", 120)]
    assert status.failures == ((31234, result.text),)


def test_upnp_reserved_port_in_other_digits_is_a_refusal_not_a_crash():
    """``"²".isdigit()`` is true and ``int("²")`` raises: a router's
    NewReservedPort is taken only in ASCII digits."""
    def answers(action, lease):
        if action == "AddPortMapping":
            return soap_fault(718, "ConflictInMappingEntry")
        return soap_ok(action, {"NewReservedPort": "\u00b2"})
    result, calls, status = _scripted_upnp(answers, version=2)
    assert result == Refusal("garbage", "AddAnyPortMapping gave no usable port (\u00b2)")
    assert calls == [("AddPortMapping", 120), ("AddAnyPortMapping", 120)]
    assert status.failures == ((31234, result.text),)
