"""Sentinel TTL discovery: classification (pure), and probes over loopback (no
privileges needed).  Reading the error queue: test_errqueue.py; address
classes: test_addresses.py."""

import errno
import socket
import time

import pytest
from hypothesis import given, settings, strategies as st

from punchcat.traverse import hops
from punchcat.traverse.diagnosis import Observations, explain
from punchcat.traverse.errqueue import LOCAL, OTHER, TIME_EXCEEDED, UNREACHABLE
from punchcat.traverse.hops import SILENT, Hop, classify

# -- classification ---------------------------------------------------------------

PEER = "203.0.113.20"


def te(ttl, address):
    return Hop(ttl, address, TIME_EXCEEDED, rtt=0.001 * ttl, icmp=(11, 0))


def unreach(ttl, address, code=3):
    return Hop(ttl, address, UNREACHABLE, rtt=0.001 * ttl, icmp=(3, code))


def path(*addresses, peer_at=None, max_ttl=8, peer=PEER):
    """Time exceeded from each address in turn (None: silence), then the peer."""
    found = [te(t, a) for t, a in enumerate(addresses, 1) if a]
    if peer_at:
        found += [unreach(t, peer) for t in range(peer_at, max_ttl + 1)]
    return found


def test_one_nat_far_side_drops():                                          # lab (a)
    r = classify(PEER, path("192.168.1.1", "198.51.100.1", "192.0.2.2"), max_ttl=8)
    assert (r.inside, r.inside_known, r.ttls, r.conclusive) == (1, True, (2,), True)
    assert r.peer_distance is None and not r.peer_answered
    assert r.describe() == "1 NAT on this side (192.168.1.1); sentinel TTL 2"


def test_one_nat_far_side_answers():
    r = classify(PEER, path("192.168.1.1", "198.51.100.1", "192.0.2.2", peer_at=4), max_ttl=8)
    assert (r.peer_distance, r.ttls, r.conclusive) == (4, (2,), True)
    assert r.describe() == "1 NAT on this side (192.168.1.1), peer 4 hops away; sentinel TTL 2"


def test_two_nats():                                                        # lab (b)
    r = classify(PEER, path("172.17.0.1", "192.168.1.1", "198.51.100.1", "192.0.2.2"),
                 max_ttl=8)
    assert (r.inside, r.ttls, r.conclusive) == (2, (3,), True)
    assert r.describe() == "2 NATs on this side (172.17.0.1, 192.168.1.1); sentinel TTL 3"


def test_carrier_nat_behind_home_nat():
    r = classify(PEER, path("192.168.1.1", "100.64.0.1", "100.64.7.1", "198.51.100.1", "192.0.2.2",
                            "192.0.2.9"), max_ttl=8)
    assert (r.inside, r.ttls, r.conclusive) == (3, (4,), True)


def test_same_link():                                                       # lab (c)
    r = classify("192.168.1.3", path(peer_at=1, peer="192.168.1.3"), max_ttl=8)
    assert (r.peer_distance, r.ttls, r.sentinel, r.inside) == (1, (), False, 0)
    assert r.describe() == "peer is 1 hop away (same link); no sentinels: plain simultaneous open"
    assert r.ttl_for(40000) is None


def test_peer_behind_our_own_nat():
    # A container whose peer is a machine on the host's LAN: d = 2.
    r = classify("192.168.1.50", path("172.17.0.1", peer_at=2, peer="192.168.1.50"), max_ttl=8)
    assert (r.peer_distance, r.ttls, r.conclusive) == (2, (), True)
    assert r.describe() == ("peer is 2 hops away (via 172.17.0.1); "
                            "no sentinels: plain simultaneous open")


@pytest.mark.parametrize("hops_before,distance,ttls", [
    # An IPv4 peer's address is its NAT router: the TTL dies before it (d - 1).
    (["192.168.1.1", "198.51.100.1"], 3, (2,)),
    (["192.168.1.1"], 2, ()),                           # need 2 > cap 1: next to our NAT
    (["192.168.1.1", "198.51.100.1", "192.0.2.2"], 4, (2,)),
    (["172.17.0.1", "192.168.1.1", "198.51.100.1"], 4, (3,)),
    (["172.17.0.1", "192.168.1.1"], 3, ()),             # need 3 > cap 2
    (["172.17.0.1", "192.168.1.1", "198.51.100.1", "192.0.2.2"], 5, (3,)),
])
def test_the_peer_bounds_the_ttl(hops_before, distance, ttls):
    r = classify(PEER, path(*hops_before, peer_at=distance), max_ttl=8)
    assert (r.peer_distance, r.ttls, r.conclusive) == (distance, ttls, True)


def test_nat_that_drops_its_time_exceeded():                                # lab (d)
    r = classify(PEER, path(None, "198.51.100.1", "192.0.2.2"), max_ttl=8)
    assert (r.inside, r.inside_known, r.ttls, r.conclusive) == (1, True, (2,), True)
    assert r.describe() == "1 NAT on this side (silent); sentinel TTL 2"


def test_ipv6_firewall_no_nat():                                            # lab (e)
    peer = "2001:db8:b::2"
    r = classify(peer, path("2001:db8:a::1", "2001:db8:1::1", "2001:db8:12::2", "2001:db8:2::20"),
                 max_ttl=8)
    assert (r.inside, r.inside_known, r.ttls, r.conclusive) == (0, True, (2,), True)
    assert r.describe() == "no NAT on this side (hop 1, 2001:db8:a::1, is public); sentinel TTL 2"
    r = classify(peer, path("2001:db8:a::1", "2001:db8:1::1", "2001:db8:12::2", "2001:db8:2::20",
                            peer_at=5, peer=peer), max_ttl=8)
    assert (r.peer_distance, r.ttls) == (5, (2,))


def test_nothing_heard_beyond_the_first_public_hop():
    r = classify(PEER, path("192.168.1.1", "198.51.100.1"), max_ttl=8)
    assert (r.inside, r.ttls, r.conclusive) == (1, (2,), False)
    assert r.describe().endswith("sentinel TTL 2 (unsure)")


def test_silence_after_our_nat_rotates_two_ttls():
    r = classify(PEER, path("192.168.1.1"), max_ttl=8)
    assert (r.inside, r.inside_known, r.ttls, r.conclusive) == (1, False, (2, 3), False)
    assert r.describe() == ("at least 1 NAT on this side (192.168.1.1), nothing heard from "
                            "outside; sentinel TTLs 2, 3 in rotation (unsure)")
    assert [r.ttl_for(p) for p in (40000, 40001, 40002)] == [2, 3, 2]


def test_total_silence():
    r = classify(PEER, [], max_ttl=8)
    assert (r.inside, r.ttls, r.conclusive, len(r.hops)) == (0, (2, 3), False, 8)
    assert r.describe() == "no hop answered; sentinel TTLs 2, 3 in rotation (unsure)"


def test_total_silence_but_the_peer_answers_from_afar():
    r = classify(PEER, [], far=unreach(64, PEER), max_ttl=8)
    assert r.peer_answered and r.peer_distance is None
    assert (r.ttls, r.conclusive) == ((2, 3), False)


def test_the_far_answer_settles_a_silent_middle():
    r = classify(PEER, path("192.168.1.1", "198.51.100.1"), far=unreach(64, PEER), max_ttl=8)
    assert (r.ttls, r.conclusive) == ((2,), True)
    assert "peer more than 8 hops away" in r.describe()


def test_a_public_wall_bounds_the_ttl():
    # The peer's firewall answers for it (admin prohibited from its router).
    found = path("192.168.1.1", "198.51.100.1", "192.0.2.2") + [unreach(4, "203.0.113.1", 13)]
    r = classify(PEER, found, max_ttl=8)
    assert (r.wall, r.ttls, r.conclusive) == (4, (2,), True)
    close = path("192.168.1.1") + [unreach(2, "198.51.100.1", 13)]
    r = classify(PEER, close, max_ttl=8)
    assert (r.wall, r.ttls) == (2, ())


def test_our_own_firewall_refusing_udp_says_nothing_of_the_peer():
    r = classify(PEER, [unreach(1, "192.168.1.1", 13)], max_ttl=8)
    assert (r.wall, r.blocked, r.inside, r.inside_known, r.ttls, r.conclusive) == \
        (None, 1, 1, False, (2, 3), False)


def test_answers_beyond_the_end_are_ignored():
    found = path("192.168.1.1", "198.51.100.1", peer_at=3) + [te(5, "10.9.9.9")]
    r = classify(PEER, found, max_ttl=8)
    assert (r.peer_distance, r.ttls) == (3, (2,))


def test_silent_hops_before_the_peer_are_not_taken_for_ours():
    # Only the peer answered (time exceeded filtered on the way back): our side
    # is unknown, and the TTLs still die before the peer's router.
    r = classify(PEER, path(None, None, None, peer_at=4), max_ttl=8)
    assert (r.inside_known, r.ttls, r.conclusive) == (False, (2, 3), False)
    r = classify(PEER, path("192.168.1.1", None, peer_at=3), max_ttl=8)
    assert (r.inside_known, r.ttls) == (False, (2,))


def test_an_ipv6_peer_is_a_host_behind_its_firewall():
    peer = "2001:db8:b::2"
    r = classify(peer, path("2001:db8:a::1", "2001:db8:1::1", peer_at=3, peer=peer), max_ttl=8)
    assert (r.peer_distance, r.ttls) == (3, ())         # need 2 > cap 3 - 2


def test_local_errors_are_not_answers():
    r = classify(PEER, [Hop(1, None, LOCAL, error="EHOSTUNREACH")], max_ttl=4)
    assert r.hops[0].kind == LOCAL and r.ttls == (2, 3)


def test_guard_follows_the_hop_where_the_sentinel_dies():
    r = classify(PEER, path("192.168.1.1", "198.51.100.1", "192.0.2.2"), max_ttl=8)
    assert r.guard() == hops.GUARD_MIN                      # 4 x 2 ms < 20 ms
    slow = [Hop(1, "192.168.1.1", TIME_EXCEEDED, rtt=0.001),
            Hop(2, "198.51.100.1", TIME_EXCEEDED, rtt=0.03),
            Hop(3, "192.0.2.2", TIME_EXCEEDED, rtt=0.2)]
    r = classify(PEER, slow, max_ttl=8)
    assert r.guard() == pytest.approx(0.12) and r.guard(3) == hops.GUARD_MAX
    assert classify(PEER, path(None, "198.51.100.1", "192.0.2.2"), max_ttl=8).guard(1) \
        == hops.GUARD_UNKNOWN


def test_the_failure_line_names_a_carrier_grade_nat_on_our_side():
    seen = Observations(PEER, socket.AF_INET, 1.0, clock=lambda: 0.0, ports=32, probes=4)
    seen.route = classify(PEER, path("192.168.1.1", "100.64.0.1", "198.51.100.1", "192.0.2.2"),
                          max_ttl=8)
    line = explain(seen)
    assert f"this side: {seen.route.describe()}" in line
    assert "behind a carrier-grade NAT (100.64.0.1)" in line
    seen.route = classify(PEER, path("192.168.1.1", "198.51.100.1", "100.64.0.1"), max_ttl=8)
    assert "carrier-grade NAT (" not in explain(seen)        # beyond our side: not ours


ADDRESSES = ["192.168.1.1", "172.17.0.1", "10.0.0.1", "100.64.0.1", "169.254.0.1",
             "198.51.100.1", "192.0.2.2", "8.8.8.8", "203.0.113.1", PEER]


@st.composite
def hop_lists(draw):
    max_ttl = draw(st.integers(1, 10))
    found = []
    for ttl in range(1, max_ttl + 1):
        what = draw(st.sampled_from(["silent", "te", "te", "unreach", "other", "local"]))
        address = draw(st.sampled_from(ADDRESSES))
        if what == "te":
            found.append(te(ttl, address))
        elif what == "unreach":
            found.append(unreach(ttl, address, draw(st.integers(0, 15))))
        elif what == "other":
            found.append(Hop(ttl, address, OTHER, icmp=(12, 0)))
        elif what == "local":
            found.append(Hop(ttl, None, LOCAL, error="EMSGSIZE"))
    far = draw(st.sampled_from([None, unreach(64, PEER), unreach(64, "192.0.2.2"),
                                te(64, "192.0.2.2")]))
    return found, far, max_ttl


@settings(max_examples=500)
@given(hop_lists())
def test_classification_never_reaches_the_peers_router(case):
    found, far, max_ttl = case
    r = classify(PEER, found, far=far, max_ttl=max_ttl)
    assert len(r.hops) == max_ttl and [h.ttl for h in r.hops] == list(range(1, max_ttl + 1))
    assert len(r.ttls) <= 2 and all(t >= 2 for t in r.ttls)
    assert r.sentinel == bool(r.ttls)
    if r.peer_distance is not None:      # PEER is IPv4: its address is its router
        assert all(t <= r.peer_distance - 1 for t in r.ttls)
        assert r.peer_answered
    if r.wall is not None:
        assert all(t <= r.wall - 1 for t in r.ttls)
    if r.conclusive and r.ttls:
        # Our side is known, and the TTL passes every hop of it.
        assert r.inside_known and r.ttls == (max(2, r.inside + 1),)
    if r.conclusive and r.ttls and r.peer_distance is None and r.wall is None \
            and not r.peer_answered:
        heard = max(h.ttl for h in r.hops if h.kind == TIME_EXCEEDED)
        assert r.ttls[0] <= heard - 1
    line = r.describe()
    assert line and "\n" not in line
    assert r.reason


# -- probing over loopback ----------------------------------------------------------

def test_loopback_peer_answers_at_hop_one():
    r = hops.discover("127.0.0.1")
    assert r.peer_distance == 1 and r.ttls == () and r.hops[0].icmp == (3, 3)
    assert r.elapsed < 0.1


def test_loopback_ipv6():
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
        r = hops.discover("::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 here: {exc}")
    if not r.hops[0].answered:
        pytest.skip("::1 is not configured here")
    assert r.peer_distance == 1 and r.ttls == () and r.hops[0].icmp == (1, 4)


def test_the_deadline_holds_when_nothing_answers():
    # A port someone listens on: the probes arrive and nothing comes back.
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        r = hops.discover("127.0.0.1", port=listener.getsockname()[1], timeout=0.08)
        took = time.monotonic() - started
    finally:
        listener.close()
    assert all(h.kind == SILENT for h in r.hops)
    assert r.ttls == (2, 3) and not r.conclusive
    assert 0.08 <= took < 0.3 and 0.08 <= r.elapsed < 0.3


def test_no_probe_possible_falls_back_to_ttl_2(monkeypatch):
    def no_socket(family, ttl):
        raise OSError(errno.ENOPROTOOPT, "no IP_RECVERR here")
    monkeypatch.setattr(hops, "probe_socket", no_socket)
    started = time.monotonic()
    r = hops.discover("127.0.0.1")
    assert time.monotonic() - started < 0.05
    assert (r.ttls, r.conclusive, r.probed) == ((2,), False, False)
    assert r.describe() == "could not probe the path; sentinel TTL 2 (unsure)"


def test_command_line(capsys):
    assert hops.main(["127.0.0.1"]) == 0
    assert capsys.readouterr().out.startswith("peer is 1 hop away (same link)")
    assert hops.main(["--json", "--repeat", "2", "127.0.0.1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and '"ttls": []' in lines[0]


def test_the_failure_line_names_this_hosts_own_error_first():
    seen = Observations(PEER, socket.AF_INET, 20.0, clock=lambda: 0.0, ports=32)
    for _ in range(40):
        seen.local_error(errno.ENETUNREACH)
    seen.local_error(errno.EADDRNOTAVAIL)         # TIME_WAIT: not this host's network
    line = explain(seen)
    assert line.startswith(f"no connection to {PEER}: this host could not send any of its "
                           f"SYNs: Network is unreachable (ENETUNREACH)"), line
    assert "EADDRNOTAVAIL" not in line and "Is punchcat running there" not in line
    assert "ip route get" in line


def test_a_refused_hello_is_remembered_for_the_failure_line_and_said_once():
    seen = Observations(PEER, socket.AF_INET, 20.0, clock=lambda: 0.0, ports=32, probes=3)
    reason = "this side is in -L mode, the peer in -L mode; these cannot work together"
    assert seen.refused_hello(reason) is True
    assert seen.refused_hello(reason) is False          # said once
    for n in range(100):                                 # a flood of distinct reasons: bounded
        seen.refused_hello(f"reason {n}")
    assert len(seen.incompatible) == 8
    assert reason in explain(seen)
