"""Two machines near each other: one link, one plain router, one
shared NAT router.  Real punchcat processes in the lab (root; see conftest)."""

import pytest

from punchcat.lab import run_pair

from conftest import sha

pytestmark = pytest.mark.lab


def exchange(lab, payload, delay_b=0.5, first="a"):
    sent = {"a": payload(64 * 1024), "b": payload(64 * 1024)}
    runs = run_pair(lab, ["-w", "20", "-v"], stdin=sent, delay_b=delay_b, timeout=60, first=first)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert sha(runs[side].stdout) == sha(sent[other])
    return runs


@pytest.mark.parametrize("kind", ["link", "routed"])
@pytest.mark.parametrize("first", ["a", "b"])
def test_two_hosts_at_home_connect_directly(make_lan, payload, kind, first):
    lab = make_lan(kind)
    runs = exchange(lab, payload, delay_b=1.0, first=first)
    for side in "ab":
        assert "peer is a private address, on this network; no sentinels" in runs[side].stderr


def test_sessions_again_and_again_on_one_link(make_lan, payload):
    lab = make_lan("link")
    for _ in range(3):
        exchange(lab, payload, delay_b=0.2)


def test_two_hosts_behind_one_hairpinning_router_naming_its_public_address(make_lan, payload):
    runs = exchange(make_lan("shared", hairpin=True), payload)
    for side in "ab":
        assert "the peer's address is this side's own router" in runs[side].stderr


def test_without_hairpin_both_fail_and_say_to_name_the_lan_address(make_lan):
    lab = make_lan("shared", hairpin=False)
    runs = run_pair(lab, ["-w", "4"], stdin={"a": b"x", "b": b"y"}, delay_b=0.3, timeout=30)
    for run in runs.values():
        assert run.returncode == 1 and run.stdout == b""
        lines = run.stderr.splitlines()
        assert len(lines) == 1
        assert ("198.51.100.10 is this side's own router: if the peer is behind the same router, "
                "the router does not loop traffic back to it; name the peer's address in the LAN "
                "instead") in lines[0]
