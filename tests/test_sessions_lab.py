"""Guessing, crossing and this host's own errors, in the NAT lab with real
punchcat processes (root; see conftest): a -k server rests longer after each
wrong secret, two sessions between the same hosts never cross, and a host
with no route says so first."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from punchcat.lab import PUNCHCAT
from punchcat.lab.netns import Namespaces

from conftest import lab_or_skip, wait_for

pytestmark = pytest.mark.lab

RIGHT = "the right secret for the server"
ECHO = r"""
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


def test_a_k_server_rests_longer_after_each_wrong_secret_then_serves_the_right_one(
        make_lab, tmp_path):
    lab = make_lab()
    echo = lab.popen("b", [sys.executable, "-c", ECHO, "7000"], stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline() == "ready\n"
    log = tmp_path / "server.log"
    server = lab.popen("b", [*PUNCHCAT, "-c", "7000", "-k", lab.peer_of("b")],
                       env=dict(os.environ, PUNCHCAT_SECRET=RIGHT), stdin=subprocess.DEVNULL,
                       stderr=open(log, "w"))
    took = []
    for n in range(4):
        started = time.monotonic()
        wrong = subprocess.run(lab.command("a", [*PUNCHCAT, "-w", "60", lab.peer_of("a")]),
                               input=b"guess", capture_output=True, timeout=90,
                               env=dict(os.environ, PUNCHCAT_SECRET=f"wrong guess number {n}"))
        took.append(time.monotonic() - started)
        assert wrong.returncode == 1 and b"authentication failed" in wrong.stderr
        assert wrong.stdout == b""
    started = time.monotonic()
    right = subprocess.run(lab.command("a", [*PUNCHCAT, "-w", "60", lab.peer_of("a")]),
                           input=b"the right one", capture_output=True, timeout=90,
                           env=dict(os.environ, PUNCHCAT_SECRET=RIGHT))
    took.append(time.monotonic() - started)
    assert right.returncode == 0, right.stderr
    assert right.stdout == b"the right one"                 # echoed by the target
    text = log.read_text()
    for rest in ("1", "2", "4", "8"):
        assert f"punching toward it again in {rest} s" in text, text
    # Each guess after the first waits out the server's rest, which doubles.
    # The rest starts when the server finds the wrong secret, and the client
    # before is still exiting then (on a loaded machine for up to a second
    # of a 4 s rest), so a client may start with part of it already gone.
    print("seconds per client:", [round(t, 2) for t in took])
    assert all(took[n] >= 0.75 * rest for n, rest in ((1, 1), (2, 2), (3, 4), (4, 8))), took
    assert took[1] < took[2] < took[3] < took[4], took
    server.terminate()
    assert server.wait(timeout=10) == 143
    echo.kill()


def test_two_sessions_started_together_between_the_same_hosts_never_cross(make_lab, tmp_path):
    """Two files from two terminals on each side, a moment apart: each
    lands in the output of its own pair, 20 times in 20 (measured before
    the session lock: crossed 3 times in 7)."""
    lab = make_lab()
    crossings, waited = 0, 0
    for attempt in range(20):
        data = {name: os.urandom(200_000) for name in ("f1", "f2")}
        procs = {}
        for name in ("f1", "f2"):
            procs[f"a{name}"] = lab.popen("a", [*PUNCHCAT, "-w", "60", lab.peer_of("a")],
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
            procs[f"b{name}"] = lab.popen("b", [*PUNCHCAT, "-w", "60", lab.peer_of("b")],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE)
            time.sleep(0.3)              # the experiment: the second pair starts a moment later
        results = {}

        def talk(key, feed=None):
            results[key] = procs[key].communicate(feed, timeout=120)
        threads = [threading.Thread(target=talk, args=(f"a{n}", data[n])) for n in data]
        threads += [threading.Thread(target=talk, args=(f"b{n}",)) for n in data]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for key, proc in procs.items():
            assert proc.returncode == 0, (key, results[key][1])
        for name in data:
            got = results[f"b{name}"][0]
            if hashlib.sha256(got).digest() != hashlib.sha256(data[name]).digest():
                crossings += 1
        waited += sum(b"waiting for it to end" in results[k][1] for k in ("af2", "bf2"))
    assert crossings == 0
    assert waited >= 20              # the second of each side said that it waited


def test_named_sessions_run_side_by_side(make_lab):
    lab = make_lab()
    data = {"one": os.urandom(100_000), "two": os.urandom(100_000)}
    procs = {}
    for name in data:
        procs[f"a{name}"] = lab.popen("a", [*PUNCHCAT, "--session", name, lab.peer_of("a")],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
    for name in reversed(list(data)):                 # the other side in the other order
        procs[f"b{name}"] = lab.popen("b", [*PUNCHCAT, "--session", name, lab.peer_of("b")],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
    for name in data:
        procs[f"a{name}"].stdin.write(data[name])
        procs[f"a{name}"].stdin.close()
    for name in data:
        out, err = procs[f"b{name}"].communicate(timeout=90)
        assert procs[f"b{name}"].returncode == 0, err
        assert out == data[name]
        assert b"waiting" not in err
    for name in data:
        assert procs[f"a{name}"].wait(timeout=30) == 0


class _NoRoute(Namespaces):
    """One host with nothing but its loopback: no route anywhere."""

    roles = ("h",)

    def build_network(self) -> None:
        self.configure("h", [], [])

    def peer_of(self, side: str, v6: bool = False) -> str:
        return "10.0.0.1"


def test_without_a_route_the_failure_line_names_this_hosts_own_error():
    lab_or_skip()
    with _NoRoute() as lab:
        done = subprocess.run(lab.command("h", [*PUNCHCAT, "-w", "3", "10.0.0.1"]),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("punchcat: no connection to 10.0.0.1: this host could not send any "
                           "of its SYNs: Network is unreachable (ENETUNREACH)"), last
    assert "Is punchcat running there" not in last
