"""A hostile peer never costs unbounded memory, a spinning core, a leaked
socket or a traceback (NAT lab).

The attacker is tests/fakepeer.py: it wins the punch with punchcat's own
techniques and hello, then misbehaves; the victim is a real punchcat on the
other host, watched from /proc (tests/victim.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from punchcat import stream
from punchcat.lab import PUNCHCAT

from conftest import wait_for
from victim import Watch, cpu_seconds

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
FAKE = [sys.executable, str(HERE / "fakepeer.py")]
SECRET = "a hostile lab secret"
#: What the victim may use, whatever the attacker sends: 64 MiB, and the
#: stream's retention ring for each direction (resuming keeps what the peer
#: has not confirmed; measured 67 MB with a secret on a loaded machine).
RSS_BOUND_KIB = 64 * 1024 + 2 * stream.RETAIN // 1024
#: punchcat's default --ports: each candidate port may hold a sentinel and a probe.
PORTS = 16
MiB = 1 << 20


def start_target(lab, side: str, kind: str, port: int = 7000) -> subprocess.Popen:
    proc = lab.popen(side, [*FAKE, "target", kind, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def start_victim(lab, side: str, args: list[str], log: Path, secret: bool = False,
                 wrap: tuple = ()) -> subprocess.Popen:
    env = dict(os.environ, PUNCHCAT_SECRET=SECRET) if secret else None
    return lab.popen(side, [*wrap, *PUNCHCAT, *args, lab.peer_of(side)], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=open(log, "w"))


def start_fake(lab, side: str, scenario: str, *args: str, log: Path) -> subprocess.Popen:
    return lab.popen(side, [*FAKE, scenario, lab.peer_of(side), *args],
                     stdout=subprocess.PIPE, stderr=open(log, "w"))


def fake_report(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    lines = out.decode().splitlines()
    assert lines, "the fake peer reported nothing"
    return json.loads(lines[-1])


def ended_cleanly(proc: subprocess.Popen, log: Path, statuses=(0, 1), timeout: float = 30):
    """The victim ends with a documented status, one line if it failed, no traceback."""
    status = proc.wait(timeout=timeout)
    text = log.read_text()
    assert status in statuses, text[-2000:]
    assert "Traceback" not in text and "internal error" not in text, text[-2000:]
    if status == 1:
        assert text.splitlines()[-1].startswith("punchcat: "), text[-2000:]
    return text


# -- memory ------------------------------------------------------------------------

@pytest.mark.parametrize("secret", [False, True], ids=["plain", "secret"])
def test_600_mb_of_pinning_frames_cost_their_bytes_not_the_reads(make_lab, tmp_path, secret):
    """A 1-byte DATA frame for a session whose local end is full, between big
    frames for a fast one: once, each pinned a whole read (RSS 36 -> 638 MiB)."""
    lab = make_lab()
    start_target(lab, "b", "pin")
    victim = start_victim(lab, "b", ["-v", "-c", "7000"], tmp_path / "victim.log", secret)
    watch = Watch(victim.pid)
    fake = start_fake(lab, "a", "pin", "--size", "600",
                      *(["--secret", SECRET] if secret else []), log=tmp_path / "fake.log")
    sent = fake_report(fake)["sent"]
    ended_cleanly(victim, tmp_path / "victim.log", statuses=(0,))
    watch.stop()
    assert sent >= 600 * MiB, (tmp_path / "fake.log").read_text()[-1000:]
    assert watch.samples > 3
    assert watch.peak_rss_kib < RSS_BOUND_KIB, f"peak RSS {watch.peak_rss_kib} KiB"


def test_data_beyond_a_window_ends_with_one_line(make_lab, tmp_path):
    lab = make_lab()
    start_target(lab, "b", "stall")
    victim = start_victim(lab, "b", ["-c", "7000"], tmp_path / "victim.log")
    watch = Watch(victim.pid)
    start_fake(lab, "a", "overrun", "--linger", "10", log=tmp_path / "fake.log")
    text = ended_cleanly(victim, tmp_path / "victim.log", statuses=(1,), timeout=60)
    watch.stop()
    assert "overran its window" in text.splitlines()[-1]
    assert watch.peak_rss_kib < RSS_BOUND_KIB


def test_an_open_flood_from_a_peer_that_never_reads(make_lab, tmp_path):
    """9 MB of OPENs: at most --max-sessions connect to the target, the
    refusals do not pile up, and the victim stops reading instead of spinning.
    For the first second after the commit the punch's own sockets are still
    open too (the follower holds its sentinels while the routers are tidied),
    so the tight bound on file descriptors holds from then on, and a looser
    one (the candidate ports' sockets on top) over the whole run."""
    lab = make_lab()
    start_target(lab, "b", "hold")
    victim = start_victim(lab, "b", ["-c", "7000", "--max-sessions", "32"],
                          tmp_path / "victim.log")
    watch = Watch(victim.pid)
    fake = start_fake(lab, "a", "open-flood", "--size", "9", "--duration", "8",
                      "--linger", "6", log=tmp_path / "fake.log")
    wait_for(lambda: "opened" in (tmp_path / "fake.log").read_text()
             or fake.poll() is not None or watch.peak_fds > 32, timeout=60,
             what="the flood to start")
    time.sleep(2)                         # the flood's own pace: let it push
    pushed = time.monotonic()
    before = cpu_seconds(victim.pid)
    time.sleep(3)
    busy = cpu_seconds(victim.pid) - before
    report = fake_report(fake)
    ended_cleanly(victim, tmp_path / "victim.log")
    watch.stop()
    assert report["opened"] >= 10_000
    after = watch.peak_fds_since(pushed)
    assert after <= 32 + 16, f"{after} file descriptors under the flood"
    assert watch.peak_fds <= 32 + 16 + 2 * PORTS, f"{watch.peak_fds} file descriptors at the start"
    assert watch.peak_rss_kib < RSS_BOUND_KIB, f"peak RSS {watch.peak_rss_kib} KiB"
    assert busy < 0.5, f"the victim used {busy:.2f} s of CPU in 3 s under the flood"


def quiet(pid: int, window: float = 0.5, most: float = 0.05):
    """A condition for wait_for: *pid* used at most *most* CPU seconds in the
    last *window* seconds (the targets have filled what they can)."""
    last = [time.monotonic(), cpu_seconds(pid)]

    def check() -> bool:
        now = time.monotonic()
        if now - last[0] < window:
            return False
        cpu = cpu_seconds(pid)
        used, last[:] = cpu - last[1], [now, cpu]
        return used <= most
    return check


def test_a_peer_that_never_reads_while_targets_send(make_lab, tmp_path):
    lab = make_lab()
    start_target(lab, "b", "spew")
    victim = start_victim(lab, "b", ["-c", "7000"], tmp_path / "victim.log", secret=True)
    watch = Watch(victim.pid)
    fake = start_fake(lab, "a", "never-read", "--sessions", "64", "--linger", "8",
                      "--secret", SECRET, log=tmp_path / "fake.log")
    wait_for(lambda: "opened" in (tmp_path / "fake.log").read_text() or fake.poll() is not None,
             timeout=60, what="the sessions")
    wait_for(quiet(victim.pid), timeout=30, what="the victim to have filled what it can")
    before = cpu_seconds(victim.pid)
    time.sleep(2)
    busy = cpu_seconds(victim.pid) - before
    fake_report(fake)
    ended_cleanly(victim, tmp_path / "victim.log")
    watch.stop()
    assert watch.peak_rss_kib < RSS_BOUND_KIB, f"peak RSS {watch.peak_rss_kib} KiB"
    assert busy < 0.3, f"the victim used {busy:.2f} s of CPU in 2 s, doing nothing"
    assert watch.peak_fds <= 64 * 3 + 16


# -- file descriptors and CPU --------------------------------------------------------

CLIENTS = r"""
import socket, sys, time
count, mode = int(sys.argv[1]), sys.argv[2]
held = []
for i in range(count):
    s = socket.socket()
    s.settimeout(60)
    s.connect(("127.0.0.1", 8022))
    if mode == "hold":
        held.append(s)
    else:
        s.sendall(b"hello\n")
        s.close()
print("done", flush=True)
time.sleep(3600)
"""


def test_a_peer_that_never_ends_sessions_cannot_leak_sockets(make_lab, tmp_path):
    """300 local clients come and go while the -c peer never sends EOF: the
    half-closed sessions time out and file descriptors stay bounded."""
    lab = make_lab()
    victim = start_victim(lab, "a", ["-v", "-L", "8022", "--max-sessions", "32",
                                     "--half-close-timeout", "1"], tmp_path / "victim.log")
    watch = Watch(victim.pid)
    fake = start_fake(lab, "b", "silent-c", "--mode", "connect", "--linger", "120",
                      log=tmp_path / "fake.log")
    wait_for(lambda: "connected to" in (tmp_path / "victim.log").read_text(), what="the punch")
    base = watch.fds()
    clients = lab.popen("a", [sys.executable, "-c", CLIENTS, "300", "close"],
                        stdout=subprocess.PIPE, text=True)
    assert clients.stdout.readline() == "done\n"        # all 300 got in
    wait_for(lambda: watch.fds() <= base, timeout=30, what="the sessions to be released")
    assert "CLOSE-WAIT" not in lab.sh("a", "ss -tan state close-wait")
    assert watch.peak_fds <= base + 3 * 32 + 4, f"{watch.peak_fds} fds (base {base})"
    clients.kill()
    fake.kill()
    ended_cleanly(victim, tmp_path / "victim.log")
    watch.stop()
    assert (tmp_path / "victim.log").read_text().count("half-closed and idle") >= 250


NOFILE = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96)); "
          "os.execvp(sys.argv[1], sys.argv[1:])")


def test_accept_failures_back_off_and_are_said_once_a_second(make_lab, tmp_path):
    """-L out of file descriptors (EMFILE): the listener stays readable; the
    victim must rest it, not spin (it once used 99 % of a core and wrote
    610,644 lines in 5 s)."""
    lab = make_lab()
    log = tmp_path / "victim.log"
    victim = start_victim(lab, "a", ["-L", "8022", "--max-sessions", "1000"], log,
                          wrap=(sys.executable, "-c", NOFILE))
    fake = start_fake(lab, "b", "silent-c", "--mode", "connect", "--linger", "60",
                      log=tmp_path / "fake.log")
    wait_for(lambda: b"won the punch" in (tmp_path / "fake.log").read_bytes(), what="the punch")
    clients = lab.popen("a", [sys.executable, "-c", CLIENTS, "120", "hold"],
                        stdout=subprocess.PIPE, text=True)
    wait_for(lambda: "cannot accept" in log.read_text(), what="EMFILE")
    lines_before = log.read_text().count("cannot accept")
    before = cpu_seconds(victim.pid)
    time.sleep(4)
    busy = cpu_seconds(victim.pid) - before
    said = log.read_text().count("cannot accept") - lines_before
    clients.kill()
    fake.kill()
    victim.terminate()
    text = ended_cleanly(victim, log, statuses=(143,))
    assert busy < 0.4, f"{busy:.2f} s of CPU in 4 s"
    assert 1 <= said <= 5, text[-2000:]
    assert re.search(r"punchcat: cannot accept a local connection: Too many open files", text)


# -- text from the peer ----------------------------------------------------------------

def test_a_reset_reason_cannot_drive_the_terminal(make_lab, tmp_path):
    lab = make_lab()
    log = tmp_path / "victim.log"
    victim = start_victim(lab, "a", ["-v", "-L", "8022"], log)
    fake = start_fake(lab, "b", "reset-escapes", "--mode", "connect", "--linger", "15",
                      log=tmp_path / "fake.log")
    wait_for(lambda: "connected to" in log.read_text(), what="the punch")
    lab.sh("a", "python3 -c 'import socket; s = socket.create_connection((\"127.0.0.1\", "
                "8022)); s.recv(10)' || true")
    wait_for(lambda: "reset by the peer" in log.read_text(), what="the reset")
    victim.terminate()
    ended_cleanly(victim, log, statuses=(143,))
    fake.kill()
    raw = log.read_bytes()
    for forbidden in (b"\x1b", b"\x07", b"\r", "\u202e".encode()):
        assert forbidden not in raw
    assert not any(line.startswith(b"punchcat: authentication OK") for line in raw.splitlines())
    assert rb"reset by the peer: \x1b]0;pwned\x07\x1b[2J\x1b[H\x0d\x0apunchcat: authentication OK\u202e" in raw


# -- the authentication phase ------------------------------------------------------------

def test_a_k_server_survives_bad_hellos_and_a_slow_peer_then_serves(make_lab, tmp_path):
    """A hello that cannot work costs its connection, not the run: each is
    said once and the server keeps punching.  One deadline for the whole
    authentication (a -c -k server was once held 50 s by one byte every
    10 s); then a real client is served."""
    lab = make_lab()
    start_target(lab, "b", "sink")
    log = tmp_path / "victim.log"
    victim = start_victim(lab, "b", ["-v", "-c", "7000", "-k"], log, secret=True)
    # A hello without the secret flag, then one in a mode that cannot work.
    for args in (["--mode", "listen"], ["--mode", "connect", "--flags", "1"]):
        fake = start_fake(lab, "a", "bad-hello", *args, log=tmp_path / "fake.log")
        assert fake_report(fake, timeout=120)["ended"] == "reset"
    wait_for(lambda: log.read_text().count("still waiting for the peer") >= 2, timeout=60,
             what="two bad hellos")
    assert "punching again" not in log.read_text()
    started = time.monotonic()
    fake = start_fake(lab, "a", "slow-auth", "--flags", "1", "--mode", "listen",
                      "--every", "2", log=tmp_path / "fake.log")
    report = fake_report(fake, timeout=120)
    assert report["closed_after"] is not None and report["closed_after"] < 20, report
    assert time.monotonic() - started < 40
    env = dict(os.environ, PUNCHCAT_SECRET=SECRET)
    client_log = tmp_path / "client.log"
    client = lab.popen("a", [*PUNCHCAT, "-v", "-L", "8022", lab.peer_of("a")], env=env,
                       stdin=subprocess.DEVNULL, stderr=open(client_log, "w"))
    wait_for(lambda: "encrypted" in client_log.read_text(), timeout=120, what="the client")
    lab.sh("a", "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8022))"
                ".sendall(b\"x\" * 100000)'")
    # (the session reaches the server before the client is stopped: a -L
    # stopped at once may not have sent its OPEN yet)
    wait_for(lambda: "session 1 to" in log.read_text(), what="the session")
    client.terminate()
    assert client.wait(timeout=10) == 143
    victim.terminate()
    text = ended_cleanly(victim, log, statuses=(143,))
    assert "this side uses a secret, the peer does not" in text
    assert "-c mode" in text and text.count("-c mode") >= 2
    assert "authentication failed: the peer did not complete it within 15 s" in text


def test_a_stray_bad_hello_before_the_real_peer_costs_nothing(make_lab, tmp_path):
    """Someone who shares the peer's public address connects first with a
    hello that cannot work: that connection is dropped, the real peer,
    arriving later, still connects and the data goes through."""
    lab = make_lab()
    log = tmp_path / "victim.log"
    victim = lab.popen("b", [*PUNCHCAT, "-v", "-w", "60", lab.peer_of("b")],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"))
    fake = start_fake(lab, "a", "bad-hello", "--mode", "connect", "--flags", "1",
                      log=tmp_path / "fake.log")
    assert fake_report(fake, timeout=120)["ended"] == "reset"
    assert victim.poll() is None                        # still punching
    peer = lab.popen("a", [*PUNCHCAT, "-w", "60", lab.peer_of("a")], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim.stdin.write(b"from b" * 1000)
    victim.stdin.close()
    got_a, _ = peer.communicate(b"from a" * 1000, timeout=90)
    got_b = victim.stdout.read()
    victim.wait(timeout=30)
    assert (peer.returncode, victim.returncode) == (0, 0), log.read_text()
    assert got_a == b"from b" * 1000 and got_b == b"from a" * 1000
    text = log.read_text()
    assert "this side has no secret, the peer uses one" in text and "still waiting" in text


def test_a_one_shot_run_against_a_slow_peer_ends_with_the_clear_line(make_lab, tmp_path):
    lab = make_lab()
    log = tmp_path / "victim.log"
    victim = start_victim(lab, "b", [], log, secret=True)
    start_fake(lab, "a", "slow-auth", "--flags", "1", "--mode", "pipe", "--every", "3",
               log=tmp_path / "fake.log")
    text = ended_cleanly(victim, log, statuses=(1,), timeout=90)
    assert text.splitlines()[-1] == ("punchcat: authentication failed: the peer did not "
                                     "complete it within 15 s")


# -- a local user who takes the candidate ports first ------------------------------------

HOLD_AS_NOBODY = """
import json, os, socket, sys, time
os.setgid(65534); os.setuid(65534)          # another user of this machine
held = []
for port in json.loads(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port)); s.listen()
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
time.sleep(3600)
"""


def test_candidate_ports_held_by_another_user_are_said_without_v(make_lab, tmp_path):
    """Without a secret the address is the only credential: a local user who
    holds the candidate ports first could take the peer's connection, and
    the real owner must hear of it without -v."""
    lab = make_lab()
    plan = json.loads(subprocess.run([*PUNCHCAT, "--plan"], capture_output=True,
                                     check=True).stdout)
    ports = sorted(set(plan["ports"]) | set(plan.get("extra_ports", [])))
    squatter = lab.popen("a", ["/usr/bin/python3", "-c", HOLD_AS_NOBODY, json.dumps(ports)],
                         stdout=subprocess.PIPE, text=True)
    assert int(squatter.stdout.readline()) >= len(plan["ports"]) // 2
    log = tmp_path / "a.log"
    victim = start_victim(lab, "a", ["-w", "3"], log)      # nobody answers: it times out
    text = ended_cleanly(victim, log, statuses=(1,))
    warnings = [line for line in text.splitlines() if "held by another user" in line]
    assert len(warnings) == 1, text                          # once per user, not per port
    assert "(uid 65534)" in warnings[0] and "without a secret" in warnings[0]
    squatter.kill()
