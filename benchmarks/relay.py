#!/usr/bin/env python3
"""punchcat through the magic-wormhole transit relay, against two bare clients of it.

Builds the lab with both NATs randomising ports (no direct path) and Debian's
transit relay on core router c1 (needs root, ip, nft, twist3), then:

* connect: N runs of a punchcat pair with ``--relay`` and a secret, the time
  from the later peer's start to its first byte (the punch matrix's measure);
* throughput: SIZE MiB from a file on host a to a consumer on host b through
  the relay, alternately by punchcat (``--relay``, encrypted: a secret is
  required) and by two bare relay clients (``relay_client.py``: the relay's
  handshake, then raw bytes), MiB/s counted by the consumer from its first
  byte to EOF, the ratio, and the share of this machine's CPU time in use
  meanwhile (the hosts, the relay and the routers share its CPUs).

    python benchmarks/relay.py                 # 20 connects, 512 MiB x 5
    python benchmarks/relay.py -n 5 --size 128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from punchcat.lab import PUNCHCAT, Lab, Side, run_pair

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = [sys.executable, os.path.join(HERE, "sink.py")]
CLIENT = [sys.executable, os.path.join(HERE, "relay_client.py")]
SECRET = "the relay benchmark's secret"


def connects(lab: Lab, relay, n: int) -> tuple[int, list[float]]:
    ok, times = 0, []
    for _ in range(n):
        sent = {"a": os.urandom(64 * 1024), "b": os.urandom(64 * 1024)}
        runs = run_pair(lab, ["-v", "-w", "60", "--relay", relay.endpoint], stdin=sent,
                        env={s: {"PUNCHCAT_SECRET": SECRET} for s in "ab"}, timeout=120)
        good = all(runs[s].returncode == 0 and "connected through the relay" in runs[s].stderr
                   for s in "ab") and runs["a"].stdout == sent["b"] and runs["b"].stdout == sent["a"]
        ok += good
        if good:
            times.append(runs["b"].first_byte)
    return ok, times


def through(lab: Lab, relay, tool: str, path: str, tmp: str) -> tuple[float, float]:
    """MiB/s, and the share of this machine's CPU time in use meanwhile."""
    report = os.path.join(tmp, "sink.json")
    if os.path.exists(report):
        os.unlink(report)
    # Every process a direct child of this script, as in throughput.py (under
    # a parent that waits for it, punchcat fell into a low mode on this VM).
    r, w = os.pipe()
    if tool == "punchcat":
        env = dict(os.environ, PUNCHCAT_SECRET=SECRET)
        receiver = lab.popen("b", [*PUNCHCAT, "-q", "--relay", relay.endpoint,
                                   lab.peer_of("b")], stdin=subprocess.DEVNULL, stdout=w,
                             env=env)
        with open(path, "rb") as source:
            sender = lab.popen("a", [*PUNCHCAT, "-q", "--relay", relay.endpoint,
                                     lab.peer_of("a")], stdin=source, env=env)
    else:
        token = os.urandom(32).hex()
        receiver = lab.popen("b", [*CLIENT, relay.endpoint, token, "b" * 16, "recv"],
                             stdout=w)
        sender = lab.popen("a", [*CLIENT, relay.endpoint, token, "a" * 16, "send", path])
    sink = lab.popen("b", [*SINK, report], stdin=r)
    os.close(r)
    os.close(w)
    sender.wait(timeout=600)
    receiver.wait(timeout=600)
    sink.wait(timeout=600)
    result = json.load(open(report))
    return result["bytes"] / result["seconds"] / 2 ** 20, result["busy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="connect runs (20)")
    parser.add_argument("--size", type=int, default=512, help="MiB per transfer (512)")
    parser.add_argument("--rounds", type=int, default=5, help="transfers per tool (5)")
    opts = parser.parse_args()
    print(f"# punchcat through the transit relay, {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, Linux {platform.release()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp, \
            Lab(Side(nat="random"), Side(nat="random")) as lab:
        relay = lab.start_relay()
        if opts.n:
            ok, times = connects(lab, relay, opts.n)
            ordered = sorted(times)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if times else 0
            print()
            print("| both NATs randomise, --relay | success | connect median | p95 | max |")
            print("|---|---|---|---|---|")
            print(f"| connect through the relay | {ok}/{opts.n} | "
                  f"{statistics.median(times):.2f} s | {p95:.2f} s | {max(times):.2f} s |",
                  flush=True)
        path = os.path.join(tmp, "data")
        with open(path, "wb") as f:
            for _ in range(opts.size):
                f.write(os.urandom(1 << 20))
        rates = {"bare relay clients": [], "punchcat --relay (encrypted)": []}
        for _ in range(opts.rounds):
            rates["bare relay clients"].append(through(lab, relay, "bare", path, tmp))
            rates["punchcat --relay (encrypted)"].append(through(lab, relay, "punchcat", path,
                                                                 tmp))
        base = statistics.median(rate for rate, _ in rates["bare relay clients"])
        print()
        print(f"| {opts.size} MiB file -> pipe through the relay | MiB/s (median of "
              f"{opts.rounds}) | min-max | x bare clients | machine busy |")
        print("|---|---|---|---|---|")
        for name, runs in rates.items():
            values = [rate for rate, _ in runs]
            print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f}-"
                  f"{max(values):.0f} | {statistics.median(values) / base:.2f} | "
                  f"{statistics.median(busy for _, busy in runs):.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
