"""The routing tables read from /proc as typed routes, and on-link lookups."""

from ipaddress import ip_address, ip_network

from hypothesis import given, strategies as st

from punchcat.routes import Route, ipv4_routes, ipv6_routes, on_link

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
V4 = (HEADER +
      "eth0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"    # default via 192.168.1.1
      "eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"    # 192.168.1.0/24 on link
      "tun0\t0000000A\t00000000\t0000\t0\t0\t0\t000000FF\t0\t0\t0\n"      # 10/8, down
      "eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FF00FF\t0\t0\t0\n"      # mask not contiguous
      "eth0\t00000000\t10101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"     # gateway over 32 bits
      "garbage line\n")
V6 = ("20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
      "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
      "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
      "fe800000000000000000000000000001 00000400 00000001 00000000 00450003     eth0\n"
      "20010db8000000000000000000000005 80 00000000000000000000000000000000 00 "
      "00000000000000000000000000000000 00000000 00000003 00000000 80200001     eth0\n"
      "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
      "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
      "20010db8000000000000000000000001 40 00000000000000000000000000000000 00 "   # host bits set
      "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
      "zz 40\n")


def test_ipv4_routes_are_typed_and_bad_lines_skipped(tmp_path):
    (tmp_path / "route").write_text(V4)
    assert ipv4_routes(str(tmp_path / "route")) == [
        Route(ip_network("0.0.0.0/0"), ip_address("192.168.1.1"), "eth0", 600, 0x3),
        Route(ip_network("192.168.1.0/24"), None, "eth0", 100, 0x1),
        Route(ip_network("10.0.0.0/8"), None, "tun0", 0, 0x0)]
    assert ipv4_routes(str(tmp_path / "missing")) == []


def test_ipv6_routes_are_typed_and_bad_lines_skipped(tmp_path):
    (tmp_path / "ipv6_route").write_text(V6)
    assert ipv6_routes(str(tmp_path / "ipv6_route")) == [
        Route(ip_network("2001:db8::/64"), None, "eth0", 0x100, 0x1),
        Route(ip_network("::/0"), ip_address("fe80::1"), "eth0", 0x400, 0x450003),
        Route(ip_network("2001:db8::5/128"), None, "eth0", 0, 0x80200001),
        Route(ip_network("::/0"), None, "lo", 0xFFFFFFFF, 0x200200)]


@given(st.text(max_size=300))
def test_reading_a_strange_table_never_raises(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("proc") / "table"
    path.write_text(text, encoding="utf-8", errors="replace")
    assert all(r.network.version == 4 for r in ipv4_routes(str(path)))
    assert all(r.network.version == 6 for r in ipv6_routes(str(path)))


def test_the_most_specific_route_decides_what_is_on_link(tmp_path):
    (tmp_path / "route").write_text(V4)
    routes = ipv4_routes(str(tmp_path / "route"))
    assert on_link(ip_address("192.168.1.7"), routes)
    assert not on_link(ip_address("8.8.8.8"), routes)       # only the default route: never
    assert not on_link(ip_address("10.1.2.3"), routes)      # its route is down: the default
    assert not on_link(ip_address("192.168.1.7"), [])
    assert on_link(ip_address("127.0.0.1"), []) and on_link(ip_address("::1"), [])
    narrower = [*routes, Route(ip_network("192.168.1.128/25"), ip_address("192.168.1.1"),
                               "eth0", 0, 0x3)]
    assert not on_link(ip_address("192.168.1.200"), narrower)
    assert on_link(ip_address("192.168.1.100"), narrower)


def test_ipv6_routes_on_lo_do_not_count(tmp_path):
    (tmp_path / "ipv6_route").write_text(V6)
    routes = ipv6_routes(str(tmp_path / "ipv6_route"))
    assert on_link(ip_address("2001:db8::9"), routes)
    assert not on_link(ip_address("2001:db8:1::9"), routes)   # the default (lo's reject: no)
    on_lo = Route(ip_network("2001:db8:1::9/128"), None, "lo", 0, 0x80200001)
    assert not on_link(ip_address("2001:db8:1::9"), [*routes, on_lo])
    assert not on_link(ip_address("2001:db8::9"), [r for r in routes if r.network.prefixlen == 0])

