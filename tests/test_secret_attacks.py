"""The secret against active attackers in the NAT lab: a fake peer
that wins the punch without the secret, a relaying man in the middle,
garbage and truncated SRP messages; and a wrong secret with -L/-c.

The attacker is tests/fakepeer.py, built on punchcat's own punch and hello.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from punchcat import srp
from punchcat.lab import PUNCHCAT, run_pair

from conftest import wait_for

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
FAKE = [sys.executable, str(HERE / "fakepeer.py")]
SECRET = "hunter2, but long enough"
MARKER = b"THE-VICTIMS-DATA-" * 1000
N = srp.SRP.group.N
SIZE = srp.SRP.group.size


def victim(lab, side: str, peer: str | None = None, args: tuple = (), data: bytes = MARKER):
    """A real punchcat with the secret, its stdin full of MARKER."""
    proc = lab.popen(side, [*PUNCHCAT, *args, peer or lab.peer_of(side)],
                     env=dict(os.environ, PUNCHCAT_SECRET=SECRET), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc


def finish(proc, timeout: float = 120) -> tuple[int, bytes, str]:
    out, err = proc.communicate(MARKER, timeout=timeout)
    return proc.returncode, out, err.decode(errors="replace")


def fake(lab, side: str, *args: str, peer: str | None = None) -> subprocess.Popen:
    return lab.popen(side, [*FAKE, *args[:1], peer or lab.peer_of(side), *args[1:]],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def report(proc, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert out, err.decode(errors="replace")[-2000:]
    return json.loads(out.decode().splitlines()[-1])


def authentication_failed(status: int, out: bytes, err: str) -> None:
    assert status == 1, err
    assert out == b""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("punchcat: authentication failed"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_a_peer_that_wins_the_punch_without_the_secret_gets_one_try_and_public_values(
        make_lab, role):
    """It gets one failed attempt, and all it received inside TLS is the SRP
    public values and salt (and, as the server, the client's M1, which no
    guess but the one it built B from can be tested against)."""
    lab = make_lab()
    real = victim(lab, "b", args=("-w", "60"))
    attacker = fake(lab, "a", "srp-steal", f"--{role}", "--mode", "pipe", "--flags", "1",
                    "--linger", "10")
    got = report(attacker)
    authentication_failed(*finish(real))
    received = [bytes.fromhex(r) for r in got["received"]]
    assert received[-1] == b"", "the victim sent something after the failed attempt"
    first = received[0]
    if role == "leader":             # the fake is the SRP client: salt | B, nothing more
        assert len(first) == srp.SALT_LEN + SIZE
        assert 0 < int.from_bytes(first[srp.SALT_LEN:], "big") < N
    else:                            # the fake is the SRP server: A | M1, nothing more
        assert len(first) == SIZE + srp.PROOF_LEN
        assert 0 < int.from_bytes(first[:SIZE], "big") < N
    assert not any(b"THE-VICTIMS-DATA" in r for r in received)


def test_a_relaying_man_in_the_middle_is_detected(make_lab, tmp_path):
    """Two real punchcats, each in a lab of its own, each punching with one
    half of a man in the middle (the halves joined by a Unix socket).  The
    halves pass the punchcat bytes through, so both victims see the same two
    hellos, then run a TLS session with each victim and relay the SRP
    messages: the proofs are bound to each TLS session, so both fail."""
    labs = [make_lab(), make_lab()]
    unix = str(tmp_path / "mitm.sock")
    first = fake(labs[0], "b", "mitm", "--unix", unix, "--first", "--linger", "10")
    assert first.stdout.readline() == b"listening\n"
    second = fake(labs[1], "b", "mitm", "--unix", unix, "--linger", "10")
    victims = [victim(lab, "a", args=("-w", "60")) for lab in labs]
    halves = {r["role"]: r for r in (report(first), report(second))}
    for proc in victims:
        authentication_failed(*finish(proc))
    assert set(halves) == {"leader", "follower"}
    assert halves["leader"]["bindings_differ"] and halves["follower"]["bindings_differ"]
    for half in halves.values():
        assert half["challenge"] == srp.CHALLENGE_LEN and half["response"] == srp.RESPONSE_LEN
        assert half["confirmation"] == 0 and half["after"] == 0   # no M2: M1 was refused


def test_a_wrong_secret_with_forwarding_fails_both_sides_and_delivers_nothing(make_lab,
                                                                              tmp_path):
    lab = make_lab()
    sink = lab.popen("b", [*FAKE, "target", "sink", "7000"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline() == "ready\n"
    runs = run_pair(lab, {"a": ["-L", "8022", "-w", "30"], "b": ["-c", "7000", "-w", "30"]},
                    env={"a": {"PUNCHCAT_SECRET": SECRET},
                         "b": {"PUNCHCAT_SECRET": "hunter3, not the secret"}})
    for run in runs.values():
        authentication_failed(run.returncode, run.stdout, run.stderr)


#: The fixed battery: (role of the fake peer, what it sends inside TLS, close after it).
BATTERY = {
    "A is zero": ("leader", b"\0" * (SIZE + 32), False),
    "A is N": ("leader", N.to_bytes(SIZE, "big") + b"\1" * 32, False),
    "a random A and M1": ("leader", os.urandom(SIZE + 32), False),
    "a truncated response": ("leader", os.urandom(100), True),
    "B is zero": ("follower", b"\0" * (srp.SALT_LEN + SIZE), False),
    "a truncated challenge": ("follower", os.urandom(10), True),
    "nothing, then the end": ("follower", b"", True),
}


def test_garbage_and_truncated_srp_messages_are_clean_errors(make_lab, tmp_path):
    """One -c -k server meets every message of the battery in turn: each is
    one "authentication failed" line, never a hang or a traceback, and the
    server punches again after each."""
    lab = make_lab()
    sink = lab.popen("b", [*FAKE, "target", "sink", "7000"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline() == "ready\n"
    log = tmp_path / "server.log"
    server = lab.popen("b", [*PUNCHCAT, "-c", "7000", "-k", lab.peer_of("b")],
                       env=dict(os.environ, PUNCHCAT_SECRET=SECRET), stdin=subprocess.DEVNULL,
                       stderr=open(log, "w"))
    for count, (name, (role, garbage, close)) in enumerate(BATTERY.items(), 1):
        attacker = fake(lab, "a", "srp-garbage", f"--{role}", "--mode", "listen",
                        "--flags", "1", "--garbage", garbage.hex(), *(["--close"] if close else []))
        report(attacker)
        wait_for(lambda: log.read_text().count("authentication failed") >= count,
                 timeout=30, what=f"the server's answer to {name}")
        assert server.poll() is None, log.read_text()
    server.terminate()
    assert server.wait(timeout=10) == 143
    lines = log.read_text().splitlines()
    assert len(lines) == len(BATTERY), lines
    assert all(line.startswith("punchcat: authentication failed: ") for line in lines), lines
    assert "Traceback" not in log.read_text()


def test_a_tls_server_with_a_foreign_dh_group_is_refused_by_the_leader(make_lab, tmp_path):
    """A fake peer wins the punch as follower (so the TLS server) and names
    RFC 7919's ffdhe2048 instead of punchcat's ffdhe3072: the real punchcat,
    leading, refuses before it sends its key share."""
    lab = make_lab()
    log = tmp_path / "victim.log"
    victim = lab.popen("b", [*PUNCHCAT, "-v", "-w", "60", lab.peer_of("b")],
                       env=dict(os.environ, PUNCHCAT_SECRET=SECRET), stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=open(log, "w"))
    fake = lab.popen("a", [*FAKE, "foreign-dh", lab.peer_of("a"), "--follower", "--mode", "pipe",
                           "--flags", "1"], stdout=subprocess.PIPE,
                     stderr=open(tmp_path / "fake.log", "w"))
    out, _ = victim.communicate(b"never to be sent", timeout=120)
    report = json.loads(fake.communicate(timeout=60)[0].decode().splitlines()[-1])
    assert victim.returncode == 1 and out == b""
    last = log.read_text().splitlines()[-1]
    assert "Diffie-Hellman group other than punchcat's" in last, last
    assert report["key_share"] is False, report

