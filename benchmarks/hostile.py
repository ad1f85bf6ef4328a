#!/usr/bin/env python3
"""What a hostile peer costs the punchcat it attacks, across the NAT lab (root).

The attacker is tests/fakepeer.py (it wins the punch with punchcat's own
techniques and hello, then misbehaves); the victim is a real punchcat with
its default options, watched from /proc.  Run it with PYTHONPATH pointing
at another checkout to measure that version (the attacker then uses that
checkout's punch too).

* pin: 600 MB of 1-byte DATA frames for a session whose local end is full,
  between big frames for a fast one: the victim's peak RSS, plain and with
  a secret;
* open flood: 9 MB of OPEN frames from a peer that never reads: peak file
  descriptors and RSS, CPU over 3 s of the flood;
* never ends: 300 local clients of -L connect, send a line and close while
  the -c peer never sends EOF: file descriptors and CLOSE-WAIT sockets 5 s
  after the last client;
* EMFILE: -L with 64 file descriptors and 200 local clients held open: CPU
  over 5 s and lines written on stderr (with -v) in those 5 s.

    python benchmarks/hostile.py [--only pin,flood,never-ends,emfile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from punchcat.lab import PUNCHCAT, Lab

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from victim import Watch, cpu_seconds  # noqa: E402

FAKE = [sys.executable, os.path.join(HERE, "..", "tests", "fakepeer.py")]
SECRET = "a hostile benchmark secret"

CLIENTS = r"""
import socket, sys, time
count, mode = int(sys.argv[1]), sys.argv[2]
held, failed = [], 0
for i in range(count):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", 8022))
    except OSError:
        failed += 1
        continue
    if mode == "hold":
        held.append(s)
    else:
        s.sendall(b"hello\n")
        s.close()
print(failed, flush=True)
time.sleep(3600)
"""
NOFILE = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
          "os.execvp(sys.argv[1], sys.argv[1:])")


def target(lab, kind: str):
    proc = lab.popen("b", [*FAKE, "target", kind, "7000"], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc


def victim(lab, side: str, args: list[str], log: str, secret: bool = False, wrap=()):
    env = dict(os.environ, PUNCHCAT_SECRET=SECRET) if secret else None
    return lab.popen(side, [*wrap, *PUNCHCAT, *args, lab.peer_of(side)], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def fake(lab, side: str, *args: str):
    return lab.popen(side, [*FAKE, args[0], lab.peer_of(side), *args[1:]],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def wait_for(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(*procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def pin(secret: bool, tmp: str) -> str:
    with Lab() as lab:
        target(lab, "pin")
        v = victim(lab, "b", ["-c", "7000"], f"{tmp}/v.log", secret)
        watch = Watch(v.pid)
        f = fake(lab, "a", "pin", "--size", "600", *(["--secret", SECRET] if secret else []))
        out, _ = f.communicate(timeout=900)
        sent = json.loads(out.decode().splitlines()[-1])["sent"] if out else 0
        v.wait(timeout=60)
        watch.stop()
        return f"{watch.peak_rss_kib / 1024:.0f} MB peak RSS ({sent / 2 ** 20:.0f} MiB sent)"


def flood(tmp: str) -> str:
    with Lab() as lab:
        target(lab, "hold")
        v = victim(lab, "b", ["-c", "7000"], f"{tmp}/v.log")
        watch = Watch(v.pid)
        f = fake(lab, "a", "open-flood", "--size", "9", "--duration", "10", "--linger", "5")
        wait_for(lambda: watch.peak_fds > 20 or f.poll() is not None)
        time.sleep(2)
        before = cpu_seconds(v.pid) if v.poll() is None else 0
        time.sleep(3)
        busy = (cpu_seconds(v.pid) - before) if v.poll() is None else float("nan")
        f.communicate(timeout=120)
        stop(v)
        watch.stop()
        return (f"{watch.peak_fds} fds, {watch.peak_rss_kib / 1024:.0f} MB peak RSS, "
                f"CPU {busy / 3 * 100:.0f} % during the flood")


def never_ends(tmp: str) -> str:
    with Lab() as lab:
        log = f"{tmp}/v.log"
        v = victim(lab, "a", ["-v", "-L", "8022"], log)
        watch = Watch(v.pid)
        f = fake(lab, "b", "silent-c", "--mode", "connect", "--linger", "600")
        wait_for(lambda: "connected to" in open(log).read())
        base = watch.fds()
        clients = lab.popen("a", [sys.executable, "-c", CLIENTS, "300", "close"],
                            stdout=subprocess.PIPE, text=True)
        failed = int(clients.stdout.readline())
        time.sleep(5)
        fds = watch.fds()
        close_wait = lab.sh("a", "ss -tanH state close-wait | wc -l").strip()
        stop(clients, f, v)
        watch.stop()
        return (f"fds {base} -> {fds} (peak {watch.peak_fds}), {close_wait} in CLOSE-WAIT, "
                f"{300 - failed} of 300 clients got in")


def emfile(tmp: str) -> str:
    with Lab() as lab:
        log = f"{tmp}/v.log"
        v = victim(lab, "a", ["-v", "-L", "8022"], log, wrap=(sys.executable, "-c", NOFILE))
        f = fake(lab, "b", "silent-c", "--mode", "connect", "--linger", "120")
        wait_for(lambda: "connected to" in open(log).read())
        clients = lab.popen("a", [sys.executable, "-c", CLIENTS, "200", "hold"],
                            stdout=subprocess.PIPE, text=True)
        clients.stdout.readline()
        time.sleep(1)
        lines = sum(1 for _ in open(log))
        before = cpu_seconds(v.pid)
        time.sleep(5)
        busy = cpu_seconds(v.pid) - before
        said = sum(1 for _ in open(log)) - lines
        stop(clients, f, v)
        return f"CPU {busy / 5 * 100:.0f} %, {said} lines on stderr in 5 s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="pin,flood,never-ends,emfile")
    parts = parser.parse_args().only.split(",")
    import punchcat
    import tempfile
    print(f"# hostile peer: {time.strftime('%Y-%m-%d')}, punchcat from "
          f"{os.path.dirname(os.path.dirname(punchcat.__file__))}")
    print("\n| attack | victim |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"pin": [("600 MB pinning frames, plain", lambda: pin(False, tmp)),
                         ("600 MB pinning frames, secret", lambda: pin(True, tmp))],
                 "flood": [("9 MB of OPENs, never reading", lambda: flood(tmp))],
                 "never-ends": [("300 clients, the peer never sends EOF",
                                 lambda: never_ends(tmp))],
                 "emfile": [("-L out of file descriptors (EMFILE)", lambda: emfile(tmp))]}
        for part in parts:
            for label, run in cases[part]:
                print(f"| {label} | {run()} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
