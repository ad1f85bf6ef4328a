#!/usr/bin/env python3
"""What the secret adds to connecting, across the NAT lab (root).

Runs punchcat pairs in one lab, alternately without and with a secret, host
b starting a second after host a (so b connects at once), and reports the
median and p90 of b's time from its start to its first byte received (the
README's "connect" time), and the difference: the time the key exchange
(TLS handshake and the proof of the secret) adds.  Run it with PYTHONPATH
pointing at another checkout to measure that version.

    python benchmarks/connect_cost.py [-n 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from punchcat.lab import Lab, run_pair


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="pairs of runs (15)")
    opts = parser.parse_args()
    import punchcat
    print(f"# connect cost: {opts.n} runs each, {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"punchcat from {os.path.dirname(os.path.dirname(punchcat.__file__))}")
    times: dict[str, list[float]] = {"no secret": [], "secret": []}
    failures = 0
    with Lab() as lab:
        for _ in range(opts.n):
            for label in times:
                env = {"PUNCHCAT_SECRET": "connect cost"} if label == "secret" else {}
                runs = run_pair(lab, ["-q", "-w", "30"], stdin={"a": b"a" * 100, "b": b"b" * 100},
                                env={"a": env, "b": env}, delay_b=1.0, timeout=60)
                b = runs["b"]
                if b.returncode != 0 or b.first_byte is None or runs["a"].returncode != 0:
                    failures += 1
                    continue
                times[label].append(b.first_byte)
    print()
    print("| run | median | p90 | runs |")
    print("|---|---|---|---|")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values) * 1000:.0f} ms | "
              f"{quantile(values, 0.9) * 1000:.0f} ms | {len(values)} |")
    added = statistics.median(times["secret"]) - statistics.median(times["no secret"])
    print(f"\nthe secret adds {added * 1000:.0f} ms (median against median)"
          + (f"; {failures} runs failed" if failures else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
