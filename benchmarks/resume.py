#!/usr/bin/env python3
"""How fast a stream resumes, and how fast a relayed one moves to a direct path.

Builds the NAT lab (needs root, ip, nft, conntrack; twist3 for the relay
rows) and runs real punchcat pairs, a sending b a file at a limited rate:

* resume: once b has part of it, both home routers "reboot" (connection
  tracking flushed, resets for 5 s); the time from the routers working again
  to b's output growing again, per run (the path's return to data flowing);
* upgrade: the direct path is blocked on the core, the link comes up through
  the transit relay, then the path opens: the time from the opening to the
  "moved the stream" line of each side.

    python benchmarks/resume.py             # 20 runs of each
    python benchmarks/resume.py -n 5 --only resume
"""

from __future__ import annotations

import argparse
import os
import shlex
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from punchcat.lab import PUNCHCAT, Lab

RESETS_FOR = 5.0
RATE = 16                  # MiB/s
#: Slower for the upgrade: the transfer (24 s) must outlast a background
#: try that misses the opening (up to 12 s) and the next one.
UPGRADE_RATE = 4
SIZE = 96                  # MiB
SLOWCAT = [sys.executable, "-c", r"""
import os, sys, time
path, rate = sys.argv[1], float(sys.argv[2]) * (1 << 20)
start, sent = time.monotonic(), 0
with open(path, "rb") as f:
    while block := f.read(1 << 18):
        os.write(1, block); sent += len(block)
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0: time.sleep(ahead)
"""]
BLOCK_DIRECT = """
table inet direct {
    chain forward { type filter hook forward priority -10; policy accept; meta l4proto tcp drop; }
}
"""


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Lines(threading.Thread):
    """A process's stderr, each line with when it came."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []
        self.start()

    def run(self):
        for line in self.stream:
            self.lines.append((time.monotonic(), line.decode(errors="replace")))

    def when(self, needle):
        return next((t for t, line in self.lines if needle in line), None)


def pair(lab, path, out, args, env=None, rate=RATE):
    env = dict(os.environ, **(env or {}))
    quote = lambda words: " ".join(map(shlex.quote, words))
    sender = lab.popen("a", ["sh", "-c", quote([*SLOWCAT, str(path), str(rate)]) + " | "
                             + quote([*PUNCHCAT, "-v", *args, lab.peer_of("a")])],
                       stderr=subprocess.PIPE, env=env)
    receiver = lab.popen("b", [*PUNCHCAT, "-v", *args, lab.peer_of("b")],
                         stdin=subprocess.DEVNULL, stdout=open(out, "wb"),
                         stderr=subprocess.PIPE, env=env)
    return sender, receiver, Lines(sender.stderr), Lines(receiver.stderr)


def wait_size(path, size, timeout=120):
    deadline = time.monotonic() + timeout
    while not (os.path.exists(path) and os.path.getsize(path) > size):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not grow past {size}")
        time.sleep(0.01)
    return time.monotonic()


def one_resume(path, tmp) -> float | None:
    out = os.path.join(tmp, "out")
    with Lab() as lab:
        a, b, _, _ = pair(lab, path, out, ["-w", "60"])
        wait_size(out, SIZE << 18)
        for side in "ab":
            lab.reboot_router(side, RESETS_FOR)
        back = time.monotonic() + RESETS_FOR
        stalled = os.path.getsize(out)
        flowing = None
        while flowing is None and time.monotonic() < back + 120:
            size = os.path.getsize(out)
            if size > stalled and time.monotonic() >= back:
                flowing = time.monotonic()
            stalled = max(stalled, size) if time.monotonic() < back else stalled
            time.sleep(0.01)
        ok = a.wait(timeout=300) == 0 and b.wait(timeout=300) == 0
        return flowing - back if ok and flowing is not None else None


def one_upgrade(path, tmp) -> float | None:
    out = os.path.join(tmp, "out")
    with Lab() as lab:
        relay = lab.start_relay()
        lab.nft("c1", BLOCK_DIRECT)
        a, b, la, lb = pair(lab, path, out, ["-w", "60", "--relay", relay.endpoint],
                            env={"PUNCHCAT_SECRET": "the upgrade benchmark's secret"},
                            rate=UPGRADE_RATE)
        wait_size(out, 1 << 20)
        opened = time.monotonic()
        lab.sh("c1", "nft delete table inet direct")
        ok = a.wait(timeout=300) == 0 and b.wait(timeout=300) == 0
        moved = [lines.when("moved the stream") for lines in (la, lb)]
        if not ok or None in moved:
            for name, proc, lines in (("a", a, la), ("b", b, lb)):
                tail = "".join(line for _, line in lines.lines[-6:])
                print(f"upgrade run failed: {name} exited {proc.returncode}\n{tail}",
                      file=sys.stderr)
            return None
        return max(moved) - opened


def table(name, results):
    times = [t for t in results if t is not None]
    if not times:
        print(f"| {name} | 0/{len(results)} | - | - | - |")
        return
    print(f"| {name} | {len(times)}/{len(results)} | {statistics.median(times):.2f} s | "
          f"{percentile(times, 0.95):.2f} s | {max(times):.2f} s |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--only", choices=["resume", "upgrade"])
    opts = parser.parse_args()
    print(f"# resuming, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"Linux {platform.release()}, {os.cpu_count()} CPUs; {SIZE} MiB at {RATE} MiB/s "
          f"({UPGRADE_RATE} MiB/s for the upgrade)")
    print()
    print("| what | success | median | p95 | max |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data")
        with open(path, "wb") as f:
            for _ in range(SIZE):
                f.write(os.urandom(1 << 20))
        if opts.only in (None, "resume"):
            table(f"both routers reboot ({RESETS_FOR:g} s of resets): path back -> data "
                  f"flowing", [one_resume(path, tmp) for _ in range(opts.n)])
        if opts.only in (None, "upgrade"):
            table("relayed link, direct path opens -> stream moved (both sides)",
                  [one_upgrade(path, tmp) for _ in range(opts.n)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
