"""Never hang, never lose data: load, dead paths, signals, slow readers, IPv6 (NAT lab)."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from punchcat.lab import PUNCHCAT, Side, endless_input, run_pair

from conftest import need, sha, wait_for

pytestmark = pytest.mark.lab


def file_sha(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def test_256_mib_each_way_at_once(make_lab, tmp_path):
    lab = make_lab()
    for side in "ab":
        with open(tmp_path / f"in-{side}", "wb") as f:
            for _ in range(256):
                f.write(os.urandom(1 << 20))
    runs = run_pair(lab, ["-w", "30"], stdin={s: str(tmp_path / f"in-{s}") for s in "ab"},
                    stdout={s: str(tmp_path / f"out-{s}") for s in "ab"}, timeout=600)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert file_sha(tmp_path / f"out-{side}") == file_sha(tmp_path / f"in-{other}")


@pytest.mark.parametrize("busy", [True, False], ids=["sending", "idle"])
def test_a_dead_path_ends_both_sides_within_the_keepalive_bound(make_lab, tmp_path, busy):
    """Without resuming (--resume-timeout 0), a dead path ends the run once
    it is noticed (tests/test_resume_lab.py: with resuming)."""
    lab = make_lab()
    logs = {s: tmp_path / f"{s}.log" for s in "ab"}
    if busy:
        r, w, stop = endless_input()
        stdin_a = r
    else:
        stdin_a = subprocess.PIPE                  # open, silent
    a = lab.popen("a", [*PUNCHCAT, "-v", "--keepalive", "10", "--resume-timeout", "0",
                        lab.peer_of("a")],
                  stdin=stdin_a, stdout=subprocess.DEVNULL, stderr=open(logs["a"], "w"))
    b = lab.popen("b", [*PUNCHCAT, "-v", "--keepalive", "10", "--resume-timeout", "0",
                        lab.peer_of("b")],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE if busy else subprocess.DEVNULL,
                  stderr=open(logs["b"], "w"))
    if busy:
        assert b.stdout.read(1 << 20)             # data flows
        threading.Thread(target=lambda: b.stdout.read(), daemon=True).start()
    else:
        wait_for(lambda: all("connected to" in logs[s].read_text() for s in "ab"),
                 what="the punch")
    cut = time.monotonic()
    lab.cut_path()
    for proc in (a, b):
        proc.wait(timeout=60)
    elapsed = time.monotonic() - cut
    assert a.returncode == 1 and b.returncode == 1
    assert elapsed < 40, f"took {elapsed:.1f} s"
    for side in "ab":
        last = logs[side].read_text().splitlines()[-1]
        assert re.fullmatch(r"punchcat: connection lost while (sending|receiving): the peer "
                            r"stopped answering \(it or the path to it is gone\)", last), last
    if busy:
        stop.set()
        os.close(w)


def start_and_wait(lab, side, args, log, marker, **kwargs):
    proc = lab.popen(side, [*PUNCHCAT, "-v", *args, lab.peer_of(side)],
                     stderr=open(log, "w"), **kwargs)
    wait_for(lambda: marker in log.read_text(), what=marker)
    return proc


def interrupt(proc, sig=signal.SIGINT) -> float:
    start = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=10)
    return time.monotonic() - start


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_waiting_for_the_peer(make_lab, tmp_path, sig, status):
    lab = make_lab()
    log = tmp_path / "a.log"
    proc = start_and_wait(lab, "a", [], log, "buckets", stdin=subprocess.DEVNULL)
    assert interrupt(proc, sig) < 1.5
    assert proc.returncode == status
    assert "Traceback" not in log.read_text()


def test_signal_while_relaying(make_lab, tmp_path):
    lab = make_lab()
    r, w, stop = endless_input()
    b = lab.popen("b", [*PUNCHCAT, lab.peer_of("b")], stdin=subprocess.DEVNULL,
                  stdout=subprocess.PIPE)
    log = tmp_path / "a.log"
    a = start_and_wait(lab, "a", [], log, "connected to", stdin=r, stdout=subprocess.DEVNULL)
    assert b.stdout.read(1 << 16)                  # data is moving
    assert interrupt(a) < 1.5
    assert a.returncode == 130
    assert "Traceback" not in log.read_text()
    stop.set()
    b.kill()


def test_signal_while_listening_frees_the_port(make_lab, tmp_path):
    lab = make_lab()
    b = lab.popen("b", [*PUNCHCAT, "-c", "7000", "-k", lab.peer_of("b")],
                  stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "a.log"
    a = start_and_wait(lab, "a", ["-L", "8022"], log, "connected to", stdin=subprocess.DEVNULL)
    assert interrupt(a) < 1.5
    assert a.returncode == 130
    probe = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 8022)); print('free')"
    assert lab.sh("a", f'python3 -c "{probe}"').strip() == "free"
    b.terminate()


def test_slow_reader_loses_nothing_and_memory_stays_bounded(make_lab, tmp_path, payload):
    need("/usr/bin/time")
    lab = make_lab()
    data = payload(64 << 20)          # more than the RSS bound: it cannot all be held
    (tmp_path / "in").write_bytes(data)
    slow_reader = (f"{sys.executable} -c \"import os, sys, time\n"
                   f"out = open('{tmp_path / 'out'}', 'wb')\n"
                   f"while chunk := os.read(0, 8192):\n"
                   f"    out.write(chunk); time.sleep(0.0002)\"")
    receiver = lab.popen("b", ["sh", "-c",
                               f"/usr/bin/time -f '%M' -o {tmp_path / 'rss'} "
                               f"{' '.join(PUNCHCAT)} {lab.peer_of('b')} < /dev/null | {slow_reader}"])
    sender = lab.popen("a", ["sh", "-c", f"{' '.join(PUNCHCAT)} {lab.peer_of('a')} "
                                         f"< {tmp_path / 'in'}"])
    assert sender.wait(timeout=300) == 0
    assert receiver.wait(timeout=300) == 0
    assert sha((tmp_path / "out").read_bytes()) == sha(data)
    peak_kib = int((tmp_path / "rss").read_text().split()[-1])
    assert peak_kib < 50 * 1024, f"peak RSS {peak_kib} KiB"


@pytest.mark.parametrize("answer", ["drop", "reject"])
def test_ipv6_through_stateful_firewalls(make_lab, payload, answer):
    lab = make_lab(Side(answer=answer), Side(answer=answer), ipv6=True)
    sent = {"a": payload(500_000), "b": payload(500_000)}
    runs = run_pair(lab, ["-w", "30", "-6"], stdin=sent, delay_b=0.5, v6=True)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert runs[side].stdout == sent[other]


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_line_on_a_terminal(make_lab, tmp_path, quiet):
    """stderr a terminal: a live progress line while data moves, cleared at the end;
    none with -q; stdout untouched."""
    lab = make_lab()
    master, slave = os.openpty()
    r, w = os.pipe()

    def trickle():                           # about 2.5 s of input
        for _ in range(25):
            os.write(w, os.urandom(100_000))
            time.sleep(0.1)                  # the input's own pace (what is measured)
        os.close(w)
    threading.Thread(target=trickle, daemon=True).start()
    a = lab.popen("a", [*PUNCHCAT, lab.peer_of("a")], stdin=r, stdout=subprocess.DEVNULL)
    b = lab.popen("b", [*PUNCHCAT, *(["-q"] if quiet else []), lab.peer_of("b")],
                  stdin=subprocess.DEVNULL, stdout=open(tmp_path / "out", "wb"), stderr=slave)
    os.close(slave)
    screen = bytearray()
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break                            # the terminal's last writer is gone
        if not chunk:
            break
        screen += chunk
    assert a.wait(timeout=60) == 0 and b.wait(timeout=60) == 0
    assert (tmp_path / "out").stat().st_size == 2_500_000
    text = screen.decode(errors="replace")
    if quiet:
        assert text == ""
    else:
        assert re.search(r"received [\d.]+ MiB, [\d.]+ [KM]iB/s", text), text
        assert text.endswith("\r\x1b[K")      # cleared at exit
