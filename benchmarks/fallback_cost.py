#!/usr/bin/env python3
"""What the random-port fallback costs one punchcat: open files, CPU, memory.

Runs the one-random pair in the NAT lab (needs root, ip, nft, GNU time):
host a behind a NAT that randomises ports, host b behind one that keeps
them, so the fallback runs on both.  Per side: connect time (the later
peer's start to its first byte), peak open file descriptors (sampled from
/proc every 20 ms), CPU seconds (user + system, GNU time) and peak RSS.

    python benchmarks/fallback_cost.py          # 10 runs, median and max
    python benchmarks/fallback_cost.py -n 3
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import threading
import time

from punchcat.lab import Lab, Side, run_pair

TIME = ["/usr/bin/time", "-f", "COST %U %S %M"]


def fd_sampler(peers: dict[str, str], peak: dict[str, int], stop: threading.Event) -> None:
    """Track the peak fd count of each punchcat, found by the PEER it names."""
    while not stop.is_set():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                if b"punchcat" not in argv:
                    continue
                side = next((s for s, p in peers.items() if p.encode() in argv), None)
                if side is None or b"/usr/bin/time" in argv[0]:
                    continue
                peak[side] = max(peak.get(side, 0), len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:
                continue
        stop.wait(0.02)


def one_run() -> dict:
    with Lab(Side(nat="random"), Side()) as lab:
        peers = {"a": lab.peer_of("a"), "b": lab.peer_of("b")}
        peak: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=fd_sampler, args=(peers, peak, stop), daemon=True)
        sampler.start()
        runs = run_pair(lab, ["-w", "60"], stdin={"a": os.urandom(65536), "b": os.urandom(65536)},
                        delay_b=1.0, timeout=120, wrap={"a": TIME, "b": TIME})
        stop.set()
        sampler.join()
    result = {"ok": all(r.returncode == 0 for r in runs.values()), "connect": runs["b"].first_byte}
    for side, run in runs.items():
        m = re.search(r"COST ([\d.]+) ([\d.]+) (\d+)", run.stderr)
        result[side] = {"fds": peak.get(side, 0),
                        "cpu": float(m.group(1)) + float(m.group(2)) if m else None,
                        "rss": int(m.group(3)) / 1024 if m else None}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="runs (10)")
    opts = parser.parse_args()
    results = [one_run() for _ in range(opts.n)]
    ok = [r for r in results if r["ok"]]
    print(f"# random-port fallback cost: {opts.n} runs, {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, Linux {platform.release()}, {os.cpu_count()} CPUs")
    print()
    connect = [r["connect"] for r in ok if r["connect"] is not None]
    print(f"success {len(ok)}/{len(results)}; connect median "
          f"{statistics.median(connect):.2f} s, max {max(connect):.2f} s" if connect else
          f"success {len(ok)}/{len(results)}")
    print()
    print("| side | peak open fds (median / max) | CPU s (median / max) | peak RSS (median / max) |")
    print("|---|---|---|---|")
    for side, label in (("a", "a (NAT randomises)"), ("b", "b (NAT preserves)")):
        fds = [r[side]["fds"] for r in ok]
        cpu = [r[side]["cpu"] for r in ok if r[side]["cpu"] is not None]
        rss = [r[side]["rss"] for r in ok if r[side]["rss"] is not None]
        if not (fds and cpu and rss):
            continue
        print(f"| {label} | {statistics.median(fds):.0f} / {max(fds)} | "
              f"{statistics.median(cpu):.2f} / {max(cpu):.2f} | "
              f"{statistics.median(rss):.0f} / {max(rss):.0f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
