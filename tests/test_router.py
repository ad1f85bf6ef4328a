"""The home router's help (PCP, NAT-PMP, UPnP-IGD through Debian's
miniupnpd in the lab router), --whoami, and several PEER addresses raced.
Real punchcat processes in the NAT lab (root; see conftest)."""

import re
import subprocess
import sys

import pytest

from punchcat.lab import PUNCHCAT, Side, run_pair

from conftest import need, sha, wait_for

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def miniupnpd():
    need("miniupnpd")


def exchange(lab, payload, args=(), **kwargs):
    sent = {"a": payload(64 * 1024), "b": payload(64 * 1024)}
    runs = run_pair(lab, ["-w", "30", "-v", *args], stdin=sent, timeout=60, **kwargs)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert sha(runs[side].stdout) == sha(sent[other])
    return runs


@pytest.mark.parametrize("service", ["all", "natpmp", "upnp"])
def test_a_router_that_maps_ports_lets_a_randomising_peer_in(make_lab, payload, service):
    lab = make_lab(Side(portmap=service), Side(nat="random"))
    runs = exchange(lab, payload, args=["--no-port-guessing"], delay_b=1.0)
    assert "the peer came in through the router's mapping of port" in runs["a"].stderr
    assert lab.mappings("a") == []                       # removed on the way out


def test_both_routers_map_ports(make_lab, payload):
    lab = make_lab(Side(portmap="all"), Side(portmap="all"))
    exchange(lab, payload, delay_b=0.5)
    assert lab.mappings("a") == [] and lab.mappings("b") == []


@pytest.mark.parametrize("service", ["errors", "garbage"])
def test_a_router_answering_errors_or_garbage_changes_nothing(make_lab, payload, service):
    lab = make_lab(Side(portmap=service, answer="reject"), Side(answer="reject"))
    runs = exchange(lab, payload, delay_b=0.5)
    assert "router: " in runs["a"].stderr                # it did answer, badly
    assert runs["b"].first_byte < 2.0                    # and the punch went on at once


def test_no_mapping_is_left_after_an_interrupt(make_lab):
    lab = make_lab(Side(portmap="all"), Side())
    proc = lab.popen("a", [*PUNCHCAT, "-v", lab.peer_of("a")], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: len(lab.mappings("a")) >= 16, what="the router's mappings")
    proc.send_signal(2)
    proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert lab.mappings("a") == []


def test_no_mapping_is_left_by_a_keep_open_server(make_lab, payload):
    lab = make_lab(Side(portmap="all"), Side())
    server = lab.popen("a", [*PUNCHCAT, "-c", "22", "-k", "-v", lab.peer_of("a")],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    for _ in range(2):                                   # two sessions of a raw pipe peer
        client = lab.popen("b", [*PUNCHCAT, "-w", "20", lab.peer_of("b")],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        client.communicate(timeout=60)                   # no sshd: the session ends at once
    wait_for(lambda: len(lab.mappings("a")) >= 16, what="the next punch's mappings")
    server.terminate()
    server.communicate(timeout=10)
    assert server.returncode == 143
    assert lab.mappings("a") == []


# -- --whoami ----------------------------------------------------------------------

def whoami(lab, side="a"):
    return subprocess.run(lab.command(side, [*PUNCHCAT, "--whoami"]), capture_output=True,
                          text=True, timeout=30)


def test_whoami_gives_the_routers_public_address(make_lab):
    lab = make_lab(Side(portmap="all"), Side())
    done = whoami(lab)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [lab.public_address("a")]
    assert "as its router reports it" in done.stderr


def test_whoami_without_a_router_says_so(make_lab):
    done = whoami(make_lab())
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith("punchcat: no address found: no router "
                                                   "answered")


def test_whoami_warns_of_a_carrier_nat_beyond_the_router(make_lab):
    done = whoami(make_lab(Side(portmap="shared"), Side()))
    assert done.stdout.splitlines() == ["100.64.12.34"]
    assert re.search(r"warning: .*100\.64\.12\.34.*(shared|carrier)", done.stderr), done.stderr


def test_whoami_lists_global_ipv6_addresses(make_lab):
    lab = make_lab(ipv6=True)
    done = whoami(lab)
    assert lab.public_address("a", v6=True) in done.stdout.splitlines()


# -- several PEER addresses --------------------------------------------------------

def test_ipv4_and_ipv6_raced_where_only_ipv6_can_connect(make_lab, payload):
    lab = make_lab(Side(nat="random"), Side(nat="random"), ipv6=True)
    runs = exchange(lab, payload, delay_b=0.5, v6="both")
    for side in "ab":
        assert re.search(r"winner: \d+->\[?2001:db8", runs[side].stderr), runs[side].stderr


def test_ipv4_and_ipv6_raced_where_both_can(make_lab, payload):
    lab = make_lab(ipv6=True)
    runs = exchange(lab, payload, delay_b=0.5, v6="both")
    for side in "ab":
        assert runs[side].stderr.count("path to ") == 2
