"""Real punchcat processes across real Linux NAT (root only; see conftest)."""

import json
import re
import subprocess
import sys
import time

import pytest

from punchcat.lab import PUNCHCAT, Side, occupy_ports, run_pair
from punchcat.schedule import active_ports, plan_bucket, ports_for_bucket

from conftest import need, sha

pytestmark = pytest.mark.lab

FAST = ["-w", "20", "-v"]


def assert_clean_success(runs, sent):
    for side, other in (("a", "b"), ("b", "a")):
        run = runs[side]
        assert run.returncode == 0, f"{side}: {run.stderr}"
        assert sha(run.stdout) == sha(sent[other]), f"{side} got {len(run.stdout)} bytes"


def test_both_directions_at_once_through_pipes(make_lab, payload):
    lab = make_lab()
    sent = {"a": payload(4_000_000), "b": payload(3_000_000)}
    runs = run_pair(lab, FAST, stdin=sent)
    assert_clean_success(runs, sent)
    assert "winner" in runs["a"].stderr and "winner" in runs["b"].stderr


def test_regular_files_in_and_out(make_lab, payload, tmp_path):
    lab = make_lab()
    sent = {"a": payload(4_000_000), "b": payload(2_500_000)}
    for side in "ab":
        (tmp_path / f"in-{side}").write_bytes(sent[side])
    runs = run_pair(lab, FAST, stdin={s: str(tmp_path / f"in-{s}") for s in "ab"},
                    stdout={s: str(tmp_path / f"out-{s}") for s in "ab"})
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert sha((tmp_path / f"out-{side}").read_bytes()) == sha(sent[other])


#: The failure line's clock reading, "(here 09:01:17 UTC)".
HERE = re.compile(r"\(here (\d\d):(\d\d):(\d\d) UTC\)")


def failure_line(run_or_err) -> str:
    err = run_or_err if isinstance(run_or_err, str) else run_or_err.stderr
    lines = [line for line in err.splitlines() if line.startswith("punchcat: ")]
    assert lines, err
    return lines[-1]


def test_no_peer_times_out_with_what_was_seen(make_lab):
    lab = make_lab(Side(answer="reject"), Side(answer="reject"))
    proc = lab.popen("a", [*PUNCHCAT, "-w", "3", lab.peer_of("a")],
                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("punchcat: no connection to 203.0.113.20: this side: 1 NAT on this side "
                           "(192.168.1.1), peer 4 hops away; sentinel TTL 2; no SYN of its "
                           "reached this host; its side answered all "), line
    assert "Is punchcat running there, pointed at this host's public IPv4 address, with a clock " \
           "within 40 s of this one (here " in line
    assert HERE.search(line)
    assert "preserve source ports" not in line         # nothing points to it


def test_a_clock_too_far_off_shows_both_readings(make_lab):
    lab = make_lab()
    # An offset whose buckets share no port with ours (5 % of offsets would).
    offset = next(o for o in range(100, 400, 7)
                  if not set(active_ports(time.time() + o, 20, 10, 16))
                  & set(active_ports(time.time(), 20, 10, 16))
                  and not set(active_ports(time.time() + o + 10, 20, 10, 16))
                  & set(active_ports(time.time() + 10, 20, 10, 16)))
    runs = run_pair(lab, ["-w", "4"], stdin={"a": b"x", "b": b"y"}, delay_b=0.2, timeout=30,
                    env={"b": {"PUNCHCAT_CLOCK_OFFSET": str(offset)}})
    clocks = []
    for side in "ab":
        assert runs[side].returncode == 1
        line = failure_line(runs[side])
        assert "with a clock within 40 s of this one" in line
        h, m, sec = map(int, HERE.search(line).groups())
        clocks.append(h * 3600 + m * 60 + sec)
    apart = (clocks[1] - clocks[0]) % 86400
    assert abs(apart - offset) <= 3, (clocks, offset)    # the user can compare them


SERVICE = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
banner = sys.argv[1].encode()
for port in map(int, sys.argv[2:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(); sel.register(s, selectors.EVENT_READ, "listen")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "listen":
            conn, _ = key.fileobj.accept()
            if banner:
                conn.sendall(banner)
            sel.register(conn, selectors.EVENT_READ, "conn")
            print("accepted", flush=True)
        else:
            data = key.fileobj.recv(65536)
            if not data:
                sel.unregister(key.fileobj); key.fileobj.close()
            else:
                print("got " + data.hex(), flush=True)
"""


@pytest.mark.parametrize("banner", ["SSH-2.0-OpenSSH_9.2\r\n", ""])
def test_a_server_on_a_candidate_port_never_sees_stdin(make_lab, banner):
    # Host b has a public address and no filter: whatever listens there on a
    # candidate port accepts punchcat's connections.
    lab = make_lab(Side(), Side(nat="none", answer="open"))
    now = time.time()
    first, last = plan_bucket(now - 25, 20, 10)[0], plan_bucket(now + 45, 20, 10)[0]
    ports = sorted({p for bucket in range(first, last + 1) for p in ports_for_bucket(bucket, 16)})
    service = lab.popen("b", [sys.executable, "-c", SERVICE, banner, *map(str, ports)],
                        stdout=subprocess.PIPE, text=True)
    assert service.stdout.readline() == "ready\n"
    marker = b"STDIN-MUST-NOT-LEAK"
    proc = lab.popen("a", [*PUNCHCAT, "-w", "8", "-v", lab.public_address("b")],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(marker * 100, timeout=60)
    service.kill()
    seen = service.stdout.read()
    assert proc.returncode == 1, err
    assert out == b""
    assert "accepted" in seen                              # punchcat did reach it
    received = bytes.fromhex("".join(line[4:] for line in seen.splitlines()
                                     if line.startswith("got ")))
    assert received.startswith(b"PUNCHCAT")                # only hellos went out
    assert marker not in received
    assert b"dropped connection" in err


# -- every row of the punch matrix once, at the default clock error ---------

def exchange(lab, payload, args=(), **kwargs):
    sent = {"a": payload(64 * 1024), "b": payload(64 * 1024)}
    runs = run_pair(lab, ["-w", "30", "-v", *args], stdin=sent, **kwargs)
    assert_clean_success(runs, sent)
    return runs


@pytest.mark.parametrize("answer", ["reject", "open"])
def test_routers_that_answer_unsolicited_syns_with_a_reset(make_lab, payload, answer):
    exchange(make_lab(Side(answer=answer), Side(answer=answer)), payload, delay_b=1.0)


def test_public_host_behind_a_stateful_firewall(make_lab, payload):
    exchange(make_lab(Side(nat="none", answer="drop"), Side()), payload, delay_b=1.0)


@pytest.mark.parametrize("answer, skew", [("drop", 15), ("reject", -15)])
def test_clocks_apart_within_the_clock_error(make_lab, payload, answer, skew):
    lab = make_lab(Side(answer=answer), Side(answer=answer))
    exchange(lab, payload, env={"b": {"PUNCHCAT_CLOCK_OFFSET": str(skew)}}, delay_b=0.5)


def test_a_really_shifted_clock(make_lab, payload):
    # libfaketime shifts what the process reads as the time of day.
    need("faketime")
    lab = make_lab()
    shifted = subprocess.run(["faketime", "-f", "+15s", *PUNCHCAT, "--plan"],
                             capture_output=True, check=True)
    assert json.loads(shifted.stdout)["now"] - time.time() > 14       # the shift took effect
    exchange(lab, payload, wrap={"b": ["faketime", "-f", "+15s"]}, delay_b=0.5)


def test_late_start_across_a_bucket_boundary(make_lab, payload):
    # Buckets of 2*2+2 = 6 s; host b starts 7 s later, in another bucket.
    runs = exchange(make_lab(), payload, args=["--clock-error", "2"], delay_b=7.0)
    buckets = [re.search(r"bucket (\d+)", runs[s].stderr).group(1) for s in "ab"]
    assert buckets[0] != buckets[1]


def test_ports_in_use_on_one_side(make_lab, payload):
    lab = make_lab()
    ports = sorted(active_ports(time.time(), 20, 10, 16))
    holder = occupy_ports(lab, "a", ports[::2])
    try:
        runs = exchange(lab, payload, delay_b=0.5)
    finally:
        holder.kill()
    assert "in use here" in runs["a"].stderr


def test_a_new_session_right_after_the_previous_one(make_lab, payload):
    need("conntrack")
    lab = make_lab(Side(answer="reject"), Side(answer="reject"))
    exchange(lab, payload)
    tracked = lab.sh("ra", "conntrack -L -p tcp 2>/dev/null")
    assert "TIME_WAIT" in tracked or "CLOSE" in tracked     # the previous session's traces
    exchange(lab, payload, delay_b=0.3)


@pytest.mark.parametrize("answer", ["drop", "reject"])
def test_a_session_leaves_no_half_open_entries_in_the_routers(make_lab, payload, answer):
    # A sentinel's entry (SYN_SENT, 120 s) left in its router is what a probe
    # of the next session spoils; the sweep after the commit closes them.
    # (Ports of a bucket that left the active set keep theirs: that bucket
    # never comes back.)
    need("conntrack")
    lab = make_lab(Side(answer=answer), Side(answer=answer))
    runs = exchange(lab, payload, delay_b=1.0)
    active = {int(p) for s in "ab"
              for p in re.findall(r"buckets [\d ]+: ports ([\d ]+)", runs[s].stderr)[-1].split()}
    for router in ("ra", "rb"):
        table = lab.sh(router, "conntrack -L -p tcp 2>/dev/null")
        entries = re.findall(r"(\w+) src=\S+ dst=\S+ sport=(\d+)", table)
        half_open = [p for state, p in entries if state.startswith("SYN_SENT") and int(p) in active]
        assert len(half_open) <= 1, table                        # was one per port (31)


# -- a NAT that gives each connection a random port ---------------------------

@pytest.mark.parametrize("random_side, answer", [("a", "drop"), ("b", "reject")])
def test_one_side_randomises_ports_and_the_fallback_connects(make_lab, payload, random_side,
                                                              answer):
    sides = {s: Side(nat="random" if s == random_side else "preserve", answer=answer)
             for s in "ab"}
    runs = exchange(make_lab(sides["a"], sides["b"]), payload, delay_b=1.0)
    for side in "ab":
        assert "random-port fallback: 256 sentinels from random ports toward port" in \
            runs[side].stderr
    met = {side: re.search(r"random-port fallback: (a sentinel|a guess) met the peer",
                           runs[side].stderr) for side in "ab"}
    assert met[random_side] and met[random_side].group(1) == "a sentinel"


def test_both_nats_randomise_ports_and_the_line_says_why(make_lab):
    lab = make_lab(Side(nat="random"), Side(nat="random"))
    runs = run_pair(lab, ["-w", "6"], stdin={"a": b"x", "b": b"y"}, delay_b=0.2, timeout=30)
    for run in runs.values():
        assert run.returncode == 1
        assert run.elapsed < 6 + 3
        assert run.stdout == b""
        lines = run.stderr.splitlines()
        assert len(lines) == 1
        assert re.search(r"The random-port fallback guessed \d+ of the peer's ports against 256 "
                         r"random ports of this side without a hit: if both NATs give each "
                         r"connection a random port \(carrier-grade NAT, phone hotspots\), no "
                         r"direct path exists without a router's help", lines[0]), lines[0]


def test_without_port_guessing_one_random_side_fails_and_says_what_might_be_why(make_lab):
    lab = make_lab(Side(nat="random"), Side())
    runs = run_pair(lab, ["-w", "5", "-v", "--no-port-guessing"], stdin={"a": b"x", "b": b"y"},
                    delay_b=0.2, timeout=30)
    for run in runs.values():
        assert run.returncode == 1
        assert "random-port fallback" not in run.stderr
        line = failure_line(run)
        assert "no SYN of its reached this host" in line
        assert "a NAT that gives each connection a random port" in line


def test_too_few_file_descriptors_for_the_fallback_is_said(make_lab):
    need("prlimit")
    lab = make_lab(Side(nat="random"), Side())
    runs = run_pair(lab, ["-w", "5"], stdin={"a": b"x", "b": b"y"}, delay_b=0.2, timeout=30,
                    wrap={"a": ["prlimit", "--nofile=200:200"]})
    assert runs["a"].returncode == 1
    assert ("The random-port fallback could not run: only 200 file descriptors (ulimit -n)"
            in failure_line(runs["a"]))


# -- a host behind two NATs (a container bridge behind the home router) ---------

@pytest.mark.parametrize("answer", ["drop", "reject"])
@pytest.mark.parametrize("inner", ["a", "b", "ab"])
def test_a_host_behind_two_nats(make_lab, payload, inner, answer):
    lab = make_lab(Side(answer=answer, inner="a" in inner), Side(answer=answer, inner="b" in inner))
    runs = exchange(lab, payload, delay_b=0.5)
    for side in inner:
        assert re.search(r"path to \S+: 2 NATs on this side \(172.17.0.1, 192.168.1.1\)"
                         r"(, peer 5 hops away)?; sentinel TTL 3 ", runs[side].stderr)


def test_two_nats_each_and_a_late_second_peer(make_lab, payload):
    lab = make_lab(Side(answer="reject", inner=True), Side(answer="reject", inner=True))
    exchange(lab, payload, delay_b=15.0)
