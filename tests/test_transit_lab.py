"""Through a relay the user runs: Debian's magic-wormhole transit relay on the
lab's internet, real punchcat processes behind real NATs (root; see conftest)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from punchcat.handshake import HELLO_LEN, MAGIC
from punchcat.lab import PUNCHCAT, Side, run_pair

from conftest import lab_or_skip, sha, wait_for

pytestmark = pytest.mark.lab

SECRET = "a relay test secret, long enough"
BOTH_RANDOM = (Side(nat="random"), Side(nat="random"))


@pytest.fixture
def relay_lab(make_lab):
    """A lab whose two NATs both randomise ports, with a transit relay on c1."""
    lab_or_skip("twist3")

    def make(a: Side = BOTH_RANDOM[0], b: Side = BOTH_RANDOM[1]):
        lab = make_lab(a, b)
        return lab, lab.start_relay()
    return make


def secret_env(**overrides):
    return {side: {"PUNCHCAT_SECRET": overrides.get(side, SECRET)} for side in "ab"}


def test_both_nats_randomising_connect_through_the_relay_256_mib_each_way(relay_lab, tmp_path):
    lab, relay = relay_lab()
    files = {}
    for side in "ab":
        files[side] = tmp_path / f"in-{side}"
        with open(files[side], "wb") as f:
            for _ in range(256):
                f.write(os.urandom(1 << 20))
    runs = run_pair(lab, ["-v", "-w", "60", "--relay", relay.endpoint],
                    stdin={s: str(files[s]) for s in "ab"},
                    stdout={s: str(tmp_path / f"out-{s}") for s in "ab"},
                    env=secret_env(), timeout=300)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert _digest(tmp_path / f"out-{side}") == _digest(files[other])
        assert f"connected through the relay {relay.endpoint}" in runs[side].stderr
    assert relay.carried() >= 2 * 256 << 20


def test_forwarded_ssh_through_the_relay(relay_lab, tmp_path):
    """-L on one side, -c with a -k server on the other, through the relay:
    sessions echo intact (real sshd: tests/test_forwarding.py does it direct)."""
    lab, relay = relay_lab()
    echo = lab.popen("b", [sys.executable, "-c", ECHO_SERVER, "7000"], stdout=subprocess.PIPE,
                     text=True)
    assert echo.stdout.readline() == "ready\n"
    env = dict(os.environ, PUNCHCAT_SECRET=SECRET)
    server = lab.popen("b", [*PUNCHCAT, "-v", "-c", "7000", "-k", "--relay", relay.endpoint,
                             lab.peer_of("b")], env=env, stdin=subprocess.DEVNULL,
                       stderr=open(tmp_path / "server.log", "w"))
    client = lab.popen("a", [*PUNCHCAT, "-v", "-L", "8022", "--relay", relay.endpoint,
                             lab.peer_of("a")], env=env, stdin=subprocess.DEVNULL,
                       stderr=open(tmp_path / "client.log", "w"))
    wait_for(lambda: "connected through the relay" in (tmp_path / "client.log").read_text(),
             timeout=60, what="the link through the relay")
    done = subprocess.run(lab.command("a", [sys.executable, "-c", ECHO_CLIENTS]),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr
    client.terminate()
    assert client.wait(timeout=10) == 143
    wait_for(lambda: "punching again" in (tmp_path / "server.log").read_text(), timeout=30,
             what="the -k server to punch again")
    server.terminate()
    assert server.wait(timeout=10) == 143
    echo.kill()


def test_proxycommand_through_the_relay(relay_lab, tmp_path):
    """ssh's ProxyCommand (a pipe) against a -c -k server, through the relay."""
    lab, relay = relay_lab()
    echo = lab.popen("b", [sys.executable, "-c", ECHO_SERVER, "7000"], stdout=subprocess.PIPE,
                     text=True)
    assert echo.stdout.readline() == "ready\n"
    env = dict(os.environ, PUNCHCAT_SECRET=SECRET)
    server = lab.popen("b", [*PUNCHCAT, "-c", "7000", "-k", "--relay", relay.endpoint,
                             lab.peer_of("b")], env=env, stdin=subprocess.DEVNULL,
                       stderr=open(tmp_path / "server.log", "w"))
    data = os.urandom(3_000_000)
    done = subprocess.run(lab.command("a", [*PUNCHCAT, "--relay", relay.endpoint,
                                            lab.peer_of("a")]),
                          input=data, capture_output=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data                          # echoed by the target
    server.terminate()
    assert server.wait(timeout=10) == 143
    echo.kill()


def test_when_a_direct_path_exists_it_wins_and_the_relay_carries_nothing(relay_lab):
    lab, relay = relay_lab(Side(), Side())
    sent = {"a": os.urandom(64 * 1024), "b": os.urandom(64 * 1024)}
    runs = run_pair(lab, ["-v", "-w", "30", "--relay", relay.endpoint], stdin=sent,
                    env=secret_env(), timeout=60)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert sha(runs[side].stdout) == sha(sent[other])
        assert "connected to" in runs[side].stderr
        assert "connected through the relay" not in runs[side].stderr
    assert relay.carried() == 0
    assert not any(r["mood"] == "happy" for r in relay.usage()), relay.usage()


def test_a_wrong_secret_through_the_relay_fails_authentication_and_delivers_nothing(relay_lab):
    lab, relay = relay_lab()
    runs = run_pair(lab, ["-w", "60", "--relay", relay.endpoint],
                    stdin={"a": b"secret data from a", "b": b"secret data from b"},
                    env=secret_env(b="another secret, also long"), timeout=120)
    for side in "ab":
        assert runs[side].returncode == 1
        assert runs[side].stdout == b""
        last = runs[side].stderr.strip().splitlines()[-1]
        assert last.startswith("punchcat: authentication failed"), runs[side].stderr
    assert runs["a"].elapsed < 30


def test_a_third_client_with_the_same_token_gets_nothing_and_the_pair_authenticates(
        relay_lab, tmp_path):
    """Someone presents our token at the relay before us (the token is made
    of public facts): whatever the relay pairs it with gets a hello at most;
    the real pair still connects, and the intruder never sees their data."""
    lab, relay = relay_lab()
    host, port = relay.endpoint.rsplit(":", 1)
    intruder = lab.popen("c2", [sys.executable, "-c", INTRUDER, host, port, str(time.time())],
                         stdout=subprocess.PIPE, text=True)
    assert intruder.stdout.readline().strip() == "waiting"
    secret_a = b"the data of a, which nobody else may read" * 1000
    secret_b = b"the data of b, which nobody else may read" * 1000
    runs = run_pair(lab, ["-v", "-w", "60", "--relay", relay.endpoint],
                    stdin={"a": secret_a, "b": secret_b}, env=secret_env(), timeout=120)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert runs[side].stdout == {"a": secret_a, "b": secret_b}[other]
    intruder.terminate()
    got = bytes.fromhex(intruder.communicate(timeout=10)[0].strip() or "")
    hellos = [got[i:i + HELLO_LEN] for i in range(0, len(got), HELLO_LEN)]
    assert hellos, "the relay never paired the intruder with a real punchcat"
    assert all(h.startswith(MAGIC) and len(h) == HELLO_LEN for h in hellos), got
    assert b"which nobody else may read" not in got     # public hellos, nothing more


def test_a_relay_killed_mid_transfer_ends_both_with_one_line(relay_lab, tmp_path):
    lab, relay = relay_lab()
    # Both NATs randomise: once the relay is gone no new link can be made,
    # and each side says so after trying for --resume-timeout.
    procs = {side: lab.popen(side, [*PUNCHCAT, "-v", "-w", "60", "--resume-timeout", "5",
                                    "--relay", relay.endpoint, lab.peer_of(side)],
                             env=dict(os.environ, PUNCHCAT_SECRET=SECRET),
                             stdin=subprocess.PIPE if side == "a" else subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / side, "w"))
             for side in "ab"}
    stop = threading.Event()

    def feed():
        block = os.urandom(1 << 16)
        try:
            while not stop.is_set():
                procs["a"].stdin.write(block)
        except OSError:
            pass
    threading.Thread(target=feed, daemon=True).start()
    wait_for(lambda: relay.carried() > 0 or any(
        "connected through" in (tmp_path / s).read_text() for s in "ab"), timeout=60,
        what="the link through the relay")
    wait_for(lambda: "connected through" in (tmp_path / "b").read_text(), timeout=30,
             what="b connected")
    relay.kill()
    for side in "ab":
        assert procs[side].wait(timeout=60) == 1
        last = (tmp_path / side).read_text().strip().splitlines()[-1]
        assert last.startswith(f"punchcat: the relay {relay.endpoint} closed the link"), last
        assert "no new link within 5 s" in last, last
        assert "Traceback" not in (tmp_path / side).read_text()
    stop.set()


def _digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
def handle(c):
    while data := c.recv(65536):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

ECHO_CLIENTS = r"""
import os, socket, threading
def session(size, out):
    s = socket.create_connection(("127.0.0.1", 8022))
    data = os.urandom(size)
    threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR))).start()
    got = bytearray()
    while chunk := s.recv(1 << 20):
        got += chunk
    out.append(bytes(got) == data)
out = []
threads = [threading.Thread(target=session, args=(n, out)) for n in (7, 3_000_000, 9_000_000)]
[t.start() for t in threads]; [t.join() for t in threads]
print(all(out) and len(out) == 3)
"""

#: Presents the tokens of the active buckets (public facts) with one side of
#: its own (so that the relay does not pair it with itself), several times
#: over, and keeps whatever comes: hex on stdout.
INTRUDER = r"""
import os, select, socket, sys, time
from punchcat.schedule import active_buckets
from punchcat.traverse.transit import request, token
host, port, now = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
side = os.urandom(8)
for bucket in active_buckets(now, 20.0, 10.0):
    for _ in range(3):
        s = socket.create_connection((host, port))
        s.sendall(request(token(bucket, bytes(8), bytes(8)), side))
        socks.append(s)
print("waiting", flush=True)
got = bytearray()
import signal
signal.signal(signal.SIGTERM, lambda *a: (print(got.hex(), flush=True), sys.exit(0)))
while socks:
    for s in select.select(socks, [], [])[0]:
        data = s.recv(65536)
        if not data:
            socks.remove(s)
        elif data != b"ok\n":
            got += data[3:] if data.startswith(b"ok\n") else data
signal.pause()
"""
