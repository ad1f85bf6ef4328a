"""Sentinel TTL discovery on real Linux routers in network namespaces (root only).

Each test builds a small chain (tests/hops_chain.py) and runs
``python -m punchcat.traverse.hops`` inside a host's namespace, ten times, as an
unprivileged program would; the median discovery time is printed (``-s``).
The sentinel tests then check what the recommendation is for: a SYN with
the discovered TTL opens our NATs for the far side's SYN, and one with a
TTL too small or too large does not.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import hops_chain as hc
from conftest import lab_or_skip

pytestmark = pytest.mark.lab

ROOT = str(Path(__file__).resolve().parent.parent)
ENV = {**os.environ, "PYTHONPATH": ROOT}
RUNS = 10
#: Generous bounds for a loaded CI machine; the medians measured are ~1 and ~11 ms.
QUICK = 0.1


@pytest.fixture
def chain():
    """Build chains; each is torn down after the test, pass or fail."""
    lab_or_skip(lab="the hop lab")
    built: list[hc.Chain] = []

    def make(c: hc.Chain) -> hc.Chain:
        built.append(c)
        return c.__enter__()

    yield make
    for c in built:
        c.close()


def discover_in(c: hc.Chain, role: str, peer: str, label: str) -> list[dict]:
    """RUNS discoveries from *role* toward *peer*; every one must agree."""
    done = c.run(role, [sys.executable, "-m", "punchcat.traverse.hops", "--json", "--repeat", str(RUNS),
                        "--pause", "0.05", peer], env=ENV)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == RUNS
    lines = {r["line"] for r in results}
    assert len(lines) == 1, lines
    median = statistics.median(r["elapsed"] for r in results)
    print(f"\n[{label}] {results[0]['line']}: median {median * 1000:.1f} ms, "
          f"max {max(r['elapsed'] for r in results) * 1000:.1f} ms over {RUNS}")
    return results


def addresses(result: dict) -> list:
    return [h["address"] for h in result["hops"]]


# -- discovery -------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["drop", "open"])
def test_one_nat(chain, answer):                                                # (a)
    c = chain(hc.one_nat(answer))
    r = discover_in(c, "a", "203.0.113.20", f"a, far router {answer}")[0]
    assert (r["inside"], r["inside_known"], r["ttls"], r["conclusive"]) == (1, True, [2], True)
    assert addresses(r)[:3] == ["192.168.1.1", "198.51.100.1", "192.0.2.2"]
    if answer == "open":
        assert r["peer_distance"] == 4 and r["hops"][3]["icmp"] == [3, 3]
    else:
        assert r["peer_distance"] is None and addresses(r)[3:] == [None] * 5
    assert r["line"].startswith("1 NAT on this side (192.168.1.1)")
    assert r["elapsed"] < QUICK
    # And from the far side, toward our public address.
    r = discover_in(c, "b", "198.51.100.10", f"a, from the far host, router {answer}")[0]
    assert (r["inside"], r["ttls"], r["conclusive"]) == (1, [2], True)


def test_two_nats(chain):                                                       # (b)
    c = chain(hc.two_nats())
    r = discover_in(c, "a", "203.0.113.20", "b, docker bridge behind a home NAT")[0]
    assert (r["inside"], r["inside_known"], r["ttls"], r["conclusive"]) == (2, True, [3], True)
    assert r["line"] == "2 NATs on this side (172.17.0.1, 192.168.1.1); sentinel TTL 3"
    assert r["elapsed"] < QUICK


def test_same_link(chain):                                                      # (c)
    # A private address is on this network: no probe at all (hops.nearby).
    c = chain(hc.same_link())
    r = discover_in(c, "a", "192.168.1.3", "c, same link")[0]
    assert (r["peer_distance"], r["ttls"], r["conclusive"], r["probed"]) == (None, [], True, False)
    assert r["line"] == ("peer is a private address, on this network; "
                         "no sentinels: plain simultaneous open")
    assert r["elapsed"] < QUICK


def test_nat_that_sends_no_time_exceeded(chain):                                # (d)
    c = chain(hc.one_nat(silent=True))
    r = discover_in(c, "a", "203.0.113.20", "d, NAT drops its time exceeded")[0]
    assert addresses(r)[:3] == [None, "198.51.100.1", "192.0.2.2"]
    assert (r["inside"], r["inside_known"], r["ttls"], r["conclusive"]) == (1, True, [2], True)
    assert r["line"] == "1 NAT on this side (silent); sentinel TTL 2"
    assert r["elapsed"] < QUICK


@pytest.mark.parametrize("answer", ["drop", "open"])
def test_ipv6_firewalls(chain, answer):                                         # (e)
    c = chain(hc.ipv6_firewalls(answer))
    r = discover_in(c, "a", "2001:db8:b::2", f"e, IPv6, far firewall {answer}")[0]
    assert (r["inside"], r["inside_known"], r["ttls"], r["conclusive"]) == (0, True, [2], True)
    assert addresses(r)[:4] == ["2001:db8:a::1", "2001:db8:1::1", "2001:db8:12::2",
                                "2001:db8:2::20"]
    assert r["peer_distance"] == (5 if answer == "open" else None)
    assert r["elapsed"] < QUICK


def test_discovery_needs_no_privileges(chain):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root")
    c = chain(hc.two_nats())
    code = ("import os; from punchcat.traverse import hops; "
            "print(os.geteuid(), hops.discover('203.0.113.20').describe())")
    for python in dict.fromkeys(filter(None, (sys.executable, shutil.which("python3")))):
        done = c.run("a", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           python, "-c", code], env=ENV)
        if done.returncode == 0:
            break
    else:
        pytest.skip(f"no Python here that user 65534 may run with {ROOT}: {done.stderr[-200:]}")
    assert done.stdout.strip() == \
        "65534 2 NATs on this side (172.17.0.1, 192.168.1.1); sentinel TTL 3"


def test_everything_silent_takes_the_deadline(chain):
    # (d) with every router silent: no evidence at all, the fallback rotation.
    c = chain(hc.one_nat())
    for role in ("ra", "c1", "c2", "rb"):
        c.nft(role, """table inet mute {
            chain output {
                type filter hook output priority 0;
                icmp type { time-exceeded, destination-unreachable } drop
            }
        }""")
    r = discover_in(c, "a", "203.0.113.20", "all routers silent")[0]
    assert (r["ttls"], r["conclusive"]) == ([2, 3], False)
    assert 0.2 <= r["elapsed"] < 0.2 + QUICK


# -- the sentinel with the discovered TTL --------------------------------------------

#: Host side: a sentinel from PORT to the peer's PORT, then wait for the far SYN.
SENTINEL = r"""
import errno, os, select, socket, sys, time
from punchcat import sockopts
peer, port, ttl, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
guard = float(sys.argv[5])
os.sched_setaffinity(0, {0})
family = socket.AF_INET6 if ":" in peer else socket.AF_INET
level, ttl_opt, min_opt = ((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, sockopts.IPV6_MINHOPCOUNT)
                           if family == socket.AF_INET6 else
                           (socket.IPPROTO_IP, socket.IP_TTL, sockopts.IP_MINTTL))
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
s.setblocking(False)
print("ready", flush=True)
sys.stdin.readline()
if how == "hops":                       # what the sentinel technique does
    sockopts.arm_sentinel(s, ttl)
else:                                   # before hop discovery: the minimum TTL was 2
    s.setsockopt(level, ttl_opt, ttl)
    s.setsockopt(level, min_opt, 2)
s.connect_ex((peer, port))
s.setsockopt(level, ttl_opt, -1)
if how == "hops":
    time.sleep(guard)
    sockopts.lift_guard(s)
else:
    time.sleep(0.05)
print("armed", flush=True)
# Decide before the kernel would retransmit the SYN at full TTL (1 s).
_, w, _ = select.select([], [s], [], 0.7)
err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print("connected" if w and not err else
      f"failed {errno.errorcode.get(err, err) if w else 'waiting'}", flush=True)
"""

#: Far side: one full-TTL SYN from PORT to our public PORT.
CONNECT = r"""
import errno, select, socket, sys
peer, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in peer else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
s.setblocking(False)
print("ready", flush=True)
sys.stdin.readline()
s.connect_ex((peer, port))
_, w, _ = select.select([], [s], [], 0.5)
err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print("connected" if w and not err else
      f"failed {errno.errorcode.get(err, err) if w else 'timeout'}", flush=True)
"""


def punch_once(c: hc.Chain, peer_of_a: str, peer_of_b: str, ttl: int, how: str = "hops",
               guard: float = 0.02, port: int = 40123) -> tuple[str, str]:
    """Host a holds a sentinel of *ttl*; then host b sends its SYN.  Returns
    what each side saw."""
    a = c.popen("a", [sys.executable, "-c", SENTINEL, peer_of_a, str(port), str(ttl), how,
                      str(guard)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=ENV)
    b = c.popen("b", [sys.executable, "-c", CONNECT, peer_of_b, str(port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=ENV)
    try:
        assert a.stdout.readline().strip() == "ready", a.stderr.read()
        assert b.stdout.readline().strip() == "ready", b.stderr.read()
        a.stdin.write("go\n"), a.stdin.flush()
        assert a.stdout.readline().strip() == "armed", a.stderr.read()
        b.stdin.write("go\n"), b.stdin.flush()
        seen_b = b.stdout.readline().strip()
        seen_a = a.stdout.readline().strip()
        return seen_a, seen_b
    finally:
        for proc in (a, b):
            proc.kill()
            proc.communicate(timeout=10)


def discovered(c: hc.Chain, peer: str) -> dict:
    done = c.run("a", [sys.executable, "-m", "punchcat.traverse.hops", "--json", peer], env=ENV)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_discovered_ttl_opens_one_nat(chain):
    c = chain(hc.one_nat())
    c.receive_elsewhere("c1", "left")
    r = discovered(c, "203.0.113.20")
    assert punch_once(c, "203.0.113.20", "198.51.100.10", r["ttls"][0]) == \
        ("connected", "connected")


def test_discovered_ttl_opens_two_nats_where_two_does_not(chain):
    c = chain(hc.two_nats())
    c.receive_elsewhere("c1", "left")
    r = discovered(c, "203.0.113.20")
    assert r["ttls"] == [3]
    assert punch_once(c, "203.0.113.20", "198.51.100.10", 3) == ("connected", "connected")
    # The fixed TTL 2 dies in the home NAT: its mapping never opens and the
    # far SYN is dropped there; the sentinel itself lives on, waiting.
    assert punch_once(c, "203.0.113.20", "198.51.100.10", 2, port=40124) == \
        ("failed waiting", "failed timeout")


def test_a_ttl_that_reaches_the_far_router_is_reset(chain):
    c = chain(hc.one_nat("open"))
    r = discovered(c, "203.0.113.20")
    assert (r["peer_distance"], r["ttls"]) == (4, [2])
    # At the peer's distance the sentinel reaches the far router, whose own
    # stack answers with a reset: the sentinel is gone before the far SYN.
    seen_a, _ = punch_once(c, "203.0.113.20", "198.51.100.10", 4)
    assert seen_a == "failed ECONNREFUSED"
    assert punch_once(c, "203.0.113.20", "198.51.100.10", 2, port=40124) == \
        ("connected", "connected")


def test_ipv6_sentinel_needs_the_guard(chain):
    c = chain(hc.ipv6_firewalls())
    if not c.receive_elsewhere("c1", "left"):
        pytest.skip("one CPU: the time exceeded comes back inside connect() and is dropped")
    r = discovered(c, "2001:db8:b::2")
    assert r["ttls"] == [2]
    guard = min(0.25, max(0.02, 4 * r["hops"][1]["rtt"]))
    assert punch_once(c, "2001:db8:b::2", "2001:db8:a::2", 2, guard=guard) == \
        ("connected", "connected")
    # punch.py today (IPV6_MINHOPCOUNT 2): the time exceeded arrives with hop
    # limit 63 and aborts the sentinel; the far SYN then meets a reset.
    assert punch_once(c, "2001:db8:b::2", "2001:db8:a::2", 2, how="minhop2", port=40124) == \
        ("failed EHOSTUNREACH", "failed ECONNREFUSED")
