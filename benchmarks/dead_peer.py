#!/usr/bin/env python3
"""How long punchcat takes to notice a dead path, idle and while sending.

Connects two punchcats across the NAT lab with --keepalive K, then drops
every packet on a core router and times each side's exit.  Resuming is off
(``--resume-timeout 0``) unless ``--resume-timeout`` says otherwise: with it
on, each side exits that much later, after trying to punch again.

    python benchmarks/dead_peer.py --keepalive 10 15 60
    python benchmarks/dead_peer.py --keepalive 15 --resume-timeout 30
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from punchcat.lab import PUNCHCAT, Lab, endless_input

def measure(keepalive: float, busy: bool, resume: float) -> tuple[float, float, int, int]:
    with Lab() as lab:
        # a sends without end, or holds an open, silent stdin
        r, w, stop = endless_input() if busy else (*os.pipe(), None)
        args = ["-v", "--keepalive", str(keepalive), "--resume-timeout", str(resume)]
        logs = {s: f"/tmp/dead-{s}.log" for s in "ab"}
        a = lab.popen("a", [*PUNCHCAT, *args, lab.peer_of("a")], stdin=r,
                      stdout=subprocess.DEVNULL, stderr=open(logs["a"], "w"))
        b = lab.popen("b", [*PUNCHCAT, *args, lab.peer_of("b")], stdin=subprocess.PIPE,
                      stdout=subprocess.DEVNULL, stderr=open(logs["b"], "w"))
        while not all("connected to" in open(logs[s]).read() for s in "ab"):
            time.sleep(0.05)
        time.sleep(1.0)                     # let data flow (or the link sit idle) a moment
        lab.cut_path()
        cut = time.monotonic()
        ends = {}
        deadline = cut + keepalive * 4 + resume * 2 + 60
        while len(ends) < 2 and time.monotonic() < deadline:
            for name, proc in (("a", a), ("b", b)):
                if name not in ends and proc.poll() is not None:
                    ends[name] = time.monotonic() - cut
            time.sleep(0.05)
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if stop is not None:
            stop.set()
        os.close(w)
        return ends.get("a", float("inf")), ends.get("b", float("inf")), a.returncode, b.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keepalive", type=float, nargs="+", default=[10, 15])
    parser.add_argument("--resume-timeout", type=float, default=0.0,
                        help="punchcat's --resume-timeout (0: resuming off)")
    opts = parser.parse_args()
    print("| --keepalive | traffic | a exits after | b exits after | statuses |")
    print("|---|---|---|---|---|")
    for k in opts.keepalive:
        for busy in (True, False):
            ta, tb, ra, rb = measure(k, busy, opts.resume_timeout)
            print(f"| {k:g} s | {'a sending' if busy else 'idle'} | {ta:.1f} s | {tb:.1f} s "
                  f"| {ra}, {rb} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
