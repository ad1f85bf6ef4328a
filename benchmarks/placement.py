#!/usr/bin/env python3
"""Where the CPU time of a lab transfer goes: is a slow run the tool, or two "hosts" on one CPU?

The lab puts both hosts, their routers and the network between them on one
machine: the sending punchcat (a), the receiving punchcat (b), the sink that
reads b's stdout, and the kernel's softirq work for every veth hop (the NAT
routers' conntrack included) all share this machine's CPUs.  On two CPUs
that sharing alone costs about a third of the rate (2026-12-03: median
1572 MiB/s left to the scheduler, 2307 pinned, 8 runs each, alternated).  This script moves SIZE MiB
file -> pipe, plain, N times, and samples every 20 ms which CPU each busy
thread last ran on (``/proc/PID/task/TID/stat``, field 39) and each CPU's
softirq time (``/proc/stat``).  Per run it prints the rate and the share of
samples in which a's and b's busiest threads ran on the same CPU.  With
``--pin`` a (and its shell) run on CPU 0, b and the sink on CPU 1, as on
two hosts: a run that is slow unpinned and never pinned is the placement,
not punchcat.

    python benchmarks/placement.py -n 10            # unpinned, then pinned
    python benchmarks/placement.py -n 10 --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time

from punchcat.lab import PUNCHCAT, Lab

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = [sys.executable, os.path.join(HERE, "sink.py")]
PC = " ".join(shlex.quote(p) for p in PUNCHCAT)
#: Sampling period: short against a run of about a second.
PERIOD = 0.02


def descendants(pid: int) -> list[int]:
    """*pid* and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def threads(pids: list[int]) -> dict[int, tuple[int, int]]:
    """tid -> (CPU it last ran on, its user+system ticks so far)."""
    seen = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seen[int(tid)] = (int(fields[36]), int(fields[11]) + int(fields[12]))
    return seen


def softirq_ticks() -> list[int]:
    return [int(line.split()[7]) for line in open("/proc/stat")
            if line.startswith("cpu") and not line.startswith("cpu ")]


class Sampler(threading.Thread):
    """Samples the busiest thread of each side, until stopped."""

    def __init__(self, side_pids):
        super().__init__(daemon=True)
        self.side_pids = side_pids          # side -> callable giving its pids
        self.stop = threading.Event()
        self.same = self.total = 0
        self.cpus: dict[str, list[int]] = {s: [] for s in side_pids}

    def run(self) -> None:
        last: dict[int, int] = {}
        while not self.stop.wait(PERIOD):
            where = {}
            for side, pids in self.side_pids.items():
                busiest, most = None, 0
                for tid, (cpu, ticks) in threads(pids()).items():
                    grew = ticks - last.get(tid, ticks)
                    last[tid] = ticks
                    if grew > most:
                        busiest, most = cpu, grew
                if busiest is not None:
                    where[side] = busiest
                    self.cpus[side].append(busiest)
            if len(where) == 2:
                self.total += 1
                self.same += where["a"] == where["b"]


def one_run(lab: Lab, path: str, tmp: str, pin: bool) -> dict:
    report = os.path.join(tmp, "sink.json")
    if os.path.exists(report):
        os.unlink(report)
    sink = " ".join(shlex.quote(p) for p in SINK)
    pa, pb = ("taskset -c 0 ", "taskset -c 1 ") if pin else ("", "")
    receiver = lab.popen("b", ["sh", "-c", f"{pb}{PC} -q {lab.peer_of('b')} < /dev/null | "
                                           f"{pb}{sink} {report}"])
    sender = lab.popen("a", ["sh", "-c", f"{pa}{PC} -q {lab.peer_of('a')} < {path}"])
    sampler = Sampler({"a": lambda: descendants(sender.pid),
                       "b": lambda: descendants(receiver.pid)})
    soft0 = softirq_ticks()
    sampler.start()
    sender.wait(timeout=600)
    receiver.wait(timeout=600)
    sampler.stop.set()
    sampler.join()
    soft = [b - a for a, b in zip(soft0, softirq_ticks())]
    result = json.load(open(report))
    return {"mib_s": result["bytes"] / result["seconds"] / 2 ** 20,
            "same": sampler.same / sampler.total if sampler.total else float("nan"),
            "softirq": soft}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB to move (1024)")
    parser.add_argument("-n", type=int, default=10, help="runs per placement (10)")
    opts = parser.parse_args()
    print(f"# placement: {opts.size} MiB file -> pipe, plain, {opts.n} runs each; "
          f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, Linux {platform.release()}, "
          f"{os.cpu_count()} CPUs")
    print()
    print("| placement | run | MiB/s | a and b on one CPU | softirq ticks per CPU |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        path = os.path.join(tmp, "data")
        with open(path, "wb") as f:
            for _ in range(opts.size):
                f.write(os.urandom(1 << 20))
        summary = {}
        for n in range(opts.n):
            for pin in (False, True):      # alternated: the same machine state for both
                r = one_run(lab, path, tmp, pin)
                label = "pinned a:0 b:1" if pin else "scheduler's choice"
                summary.setdefault(label, []).append(r["mib_s"])
                print(f"| {label} | {n + 1} | {r['mib_s']:.0f} | {r['same']:.0%} | "
                      f"{' / '.join(map(str, r['softirq']))} |", flush=True)
    print()
    print("| placement | median MiB/s | slowest | fastest |")
    print("|---|---|---|---|")
    for label, rates in summary.items():
        print(f"| {label} | {statistics.median(rates):.0f} | {min(rates):.0f} | "
              f"{max(rates):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
