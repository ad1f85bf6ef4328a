"""Real punchcat processes across real Linux NAT (root only; see conftest)."""

import json
import subprocess
import sys
import time

import pytest

from punchcat.lab import PUNCHCAT, Side, run_pair
from punchcat.schedule import article_plan

from conftest import sha

pytestmark = pytest.mark.lab

# Short buckets so that one test takes seconds: W = 2*1+2 = 4 s.
FAST = ["--clock-error", "1", "--run-window", "1", "-w", "20", "-v"]


def aligned(args=FAST, margin=1.0):
    """Wait until both peers, started within *margin* seconds, get the same plan.

    The article's plan changes at bucket boundaries; two processes that start
    on either side of one would use different ports.  (The punch that
    tolerates this is the subject of a later change.)
    """
    error, run_window = float(args[1]), float(args[3])
    while True:
        now = time.time()
        first = article_plan(now, error, run_window, 1).bucket
        if article_plan(now + margin, error, run_window, 1).bucket == first:
            return
        time.sleep(0.05)


def assert_clean_success(runs, sent):
    for side, other in (("a", "b"), ("b", "a")):
        run = runs[side]
        assert run.returncode == 0, f"{side}: {run.stderr}"
        assert sha(run.stdout) == sha(sent[other]), f"{side} got {len(run.stdout)} bytes"


def test_both_directions_at_once_through_pipes(make_lab, payload):
    lab = make_lab()
    sent = {"a": payload(4_000_000), "b": payload(3_000_000)}
    aligned()
    runs = run_pair(lab, FAST, stdin=sent)
    assert_clean_success(runs, sent)
    assert "winner" in runs["a"].stderr and "winner" in runs["b"].stderr


def test_regular_files_in_and_out(make_lab, payload, tmp_path):
    lab = make_lab()
    sent = {"a": payload(4_000_000), "b": payload(2_500_000)}
    for side in "ab":
        (tmp_path / f"in-{side}").write_bytes(sent[side])
    aligned()
    runs = run_pair(lab, FAST, stdin={s: str(tmp_path / f"in-{s}") for s in "ab"},
                    stdout={s: str(tmp_path / f"out-{s}") for s in "ab"})
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert sha((tmp_path / f"out-{side}").read_bytes()) == sha(sent[other])


def test_no_peer_times_out_with_the_likely_causes(make_lab):
    lab = make_lab()
    proc = lab.popen("a", [*PUNCHCAT, "--clock-error", "1", "--run-window", "1", "-w", "3",
                           lab.peer_of("a")],
                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1
    assert "no connection" in lines[0] and "running there" in lines[0]
    assert "preserve source ports" in lines[0]


SERVICE = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
banner = sys.argv[1].encode()
for port in map(int, sys.argv[2:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(); sel.register(s, selectors.EVENT_READ, "listen")
print("ready", flush=True)
log = open(sys.argv[0] if False else "/dev/stderr", "w")
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
    ports = sorted({p for dt in range(0, 40, 2)
                    for p in article_plan(now + dt, 1, 1, 16).ports})
    service = lab.popen("b", [sys.executable, "-c", SERVICE, banner, *map(str, ports)],
                        stdout=subprocess.PIPE, text=True)
    assert service.stdout.readline() == "ready\n"
    marker = b"STDIN-MUST-NOT-LEAK"
    proc = lab.popen("a", [*PUNCHCAT, "--clock-error", "1", "--run-window", "1", "-w", "12", "-v",
                           lab.public_address("b")],
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
