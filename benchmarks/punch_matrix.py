#!/usr/bin/env python3
"""Punch success and connect time across NAT behaviours, at the default settings.

Runs real punchcat processes in the NAT lab (needs root, ip, nft), N runs per
row, and prints one table: successes, and the time from the later peer's
start to the first byte it received (median and 95th percentile).

    python benchmarks/punch_matrix.py            # 20 runs per row
    python benchmarks/punch_matrix.py -n 3 --rows drop,reject

A run succeeds when both sides exit 0 and each received the other's bytes
intact; in the "random" row it succeeds when both exit 1 within --timeout and
stderr names the likely cause.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

from punchcat.lab import Lab, LanLab, Side, occupy_ports, run_pair
from punchcat.schedule import active_ports

PAYLOAD = 64 * 1024


@dataclass
class Row:
    name: str
    label: str
    a: Side = field(default_factory=Side)
    b: Side = field(default_factory=Side)
    delay: tuple[float, float] = (0.0, 3.0)
    skew: float = 0.0                 # b's clock offset, sign alternating per run
    occupy: bool = False              # half the candidate ports in use on host a
    after: bool = False               # a warm-up session just before the measured one
    chained: bool = False             # each run right after the previous, same lab
    expect_failure: bool = False
    timeout: float | None = None
    lan: str | None = None            # a LanLab kind instead of two homes
    hairpin: bool = False
    first: str = "a"                  # which host starts first
    fails_with: str = "no connection to"   # with expect_failure: in the last line
    ipv6: bool = False                # the lab has IPv6 too
    v6: bool | str = False            # name the peer's IPv6 address, or "both" (v4 and v6)
    args: tuple[str, ...] = ()        # extra options for both sides
    relay: str = ""                   # "relayed": must go through the lab's transit
                                      # relay; "direct": must not (the relay carries nothing)


ROWS = [
    Row("drop", "both NATs preserve ports; routers drop unsolicited"),
    Row("reject", "both preserve; firewalls reject with RST",
        Side(answer="reject"), Side(answer="reject")),
    Row("open", "both preserve; no filter (router stack answers RST)",
        Side(answer="open"), Side(answer="open")),
    Row("public", "one side public behind a stateful firewall, the other NATed",
        Side(nat="none", answer="drop"), Side()),
    Row("skew-drop", "clocks differ by 15 s (either sign), drop routers", skew=15.0),
    Row("skew-reject", "clocks differ by 15 s (either sign), reject routers",
        Side(answer="reject"), Side(answer="reject"), skew=15.0),
    Row("late", "second peer starts 5-60 s after the first", delay=(5.0, 60.0)),
    Row("in-use", "half the candidate ports in use on one side", occupy=True),
    Row("again", "new session right after the previous one (TIME_WAIT, conntrack)",
        after=True),
    Row("chain", "20 sessions back to back between the same hosts (beyond the issue's rows)",
        chained=True),
    Row("inner-a", "host a behind two NATs (container bridge + home NAT); drop routers",
        Side(inner=True), Side()),
    Row("inner-a-reject", "host a behind two NATs; reject routers",
        Side(inner=True, answer="reject"), Side(answer="reject")),
    Row("inner-b", "host b behind two NATs; drop routers", Side(), Side(inner=True)),
    Row("inner-b-reject", "host b behind two NATs; reject routers",
        Side(answer="reject"), Side(inner=True, answer="reject")),
    Row("inner-both", "both hosts behind two NATs; drop routers",
        Side(inner=True), Side(inner=True)),
    Row("inner-both-reject", "both hosts behind two NATs; reject routers",
        Side(inner=True, answer="reject"), Side(inner=True, answer="reject")),
    Row("inner-late", "both behind two NATs, reject routers, second peer 15-30 s later",
        Side(inner=True, answer="reject"), Side(inner=True, answer="reject"), delay=(15.0, 30.0)),
    Row("random-a", "a's NAT randomises ports, b's preserves; drop routers (random side first)",
        Side(nat="random"), Side()),
    Row("random-a-reject", "a's NAT randomises ports, b's preserves; reject routers",
        Side(nat="random", answer="reject"), Side(answer="reject")),
    Row("random-b", "b's NAT randomises ports (random side second); drop routers",
        Side(), Side(nat="random")),
    Row("random-b-reject", "b's NAT randomises ports (random side second); reject routers",
        Side(answer="reject"), Side(nat="random", answer="reject")),
    Row("random", "both NATs randomise ports: both exit 1 (no direct path)",
        Side(nat="random"), Side(nat="random"), expect_failure=True, timeout=15.0,
        fails_with="no direct path exists"),
    Row("upnp-all", "a's router maps ports (miniupnpd: PCP, NAT-PMP, UPnP), b's NAT randomises",
        Side(portmap="all"), Side(nat="random")),
    Row("upnp-natpmp", "a's router maps ports by NAT-PMP only, b's NAT randomises",
        Side(portmap="natpmp"), Side(nat="random")),
    Row("upnp-igd", "a's router maps ports by UPnP-IGD only, b's NAT randomises",
        Side(portmap="upnp"), Side(nat="random")),
    Row("upnp-both", "both routers map ports (miniupnpd)", Side(portmap="all"),
        Side(portmap="all")),
    Row("upnp-errors", "a's router answers every mapping request with an error; reject routers",
        Side(portmap="errors", answer="reject"), Side(answer="reject")),
    Row("v4v6-v6only", "PEER as IPv4 and IPv6, both IPv4 NATs randomise: IPv6 wins",
        Side(nat="random"), Side(nat="random"), ipv6=True, v6="both"),
    Row("v4v6-both", "PEER as IPv4 and IPv6, both can connect", ipv6=True, v6="both"),
    Row("relay-random", "both NATs randomise ports, --relay: through the transit relay",
        Side(nat="random"), Side(nat="random"), relay="relayed"),
    Row("relay-random-reject", "both randomise, reject routers, --relay: through the relay",
        Side(nat="random", answer="reject"), Side(nat="random", answer="reject"),
        relay="relayed"),
    Row("relay-direct", "both NATs preserve ports, --relay: direct wins, the relay carries nothing",
        relay="direct"),
    Row("lan", "same LAN, no router (a starts first)", lan="link"),
    Row("lan-b", "same LAN, no router (b starts first)", lan="link", first="b"),
    Row("lan-routed", "same LAN through a plain router (no NAT)", lan="routed"),
    Row("hairpin", "both behind one NAT naming its public address; router loops back",
        lan="shared", hairpin=True),
    Row("no-hairpin", "both behind one NAT naming its public address, no loopback: both exit 1",
        lan="shared", expect_failure=True, timeout=10.0, fails_with="own router"),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def one_run(lab: Lab, row: Row, index: int, rng: random.Random) -> tuple[bool, float | None, str]:
    sent = {"a": os.urandom(PAYLOAD), "b": os.urandom(PAYLOAD)}
    args = ["-v"] + (["-w", str(row.timeout)] if row.timeout else [])
    env = {"a": {}, "b": {}}
    if row.skew:
        env["b"] = {"PUNCHCAT_CLOCK_OFFSET": str(row.skew if index % 2 == 0 else -row.skew)}
    carried = 0
    if row.relay:
        args += ["--relay", lab.relay.endpoint]
        for side in env:
            env[side]["PUNCHCAT_SECRET"] = "the punch matrix's relay secret"
        carried = lab.relay.carried()
    runs = run_pair(lab, [*args, *row.args], stdin=sent, env=env,
                    delay_b=rng.uniform(*row.delay), timeout=(row.timeout or 180) + 60,
                    first=row.first, v6=row.v6)
    a, b = runs["a"], runs["b"]
    if row.expect_failure:
        ok = all(r.returncode == 1 and row.fails_with in r.stderr.splitlines()[-1]
                 and r.elapsed <= row.timeout + 5 for r in (a, b))
        return ok, None, "" if ok else a.stderr[-300:] + b.stderr[-300:]
    ok = (a.returncode == 0 and b.returncode == 0
          and a.stdout == sent["b"] and b.stdout == sent["a"])
    if row.relay:
        relayed = all("connected through the relay" in r.stderr for r in (a, b))
        ok = ok and relayed == (row.relay == "relayed")
        if row.relay == "direct":
            ok = ok and lab.relay.carried() == carried
    detail = "" if ok else f"a={a.returncode} b={b.returncode}\n{a.stderr[-400:]}\n{b.stderr[-400:]}"
    later = b if row.first == "a" else a
    return ok, later.first_byte, detail


def run_row(row: Row, n: int, rng: random.Random, verbose: bool) -> dict:
    results, times = 0, []
    lab = None
    holder = None
    try:
        for i in range(n):
            if lab is None or not row.chained:
                if lab is not None:
                    lab.close()
                lab = (LanLab(row.lan, row.hairpin) if row.lan
                       else Lab(row.a, row.b, ipv6=row.ipv6)).__enter__()
                if row.relay:
                    lab.relay = lab.start_relay()
                if row.occupy:
                    wanted = sorted(active_ports(time.time(), 20, 10, 16))
                    holder = occupy_ports(lab, "a", wanted[::2])
                if row.after:
                    one_run(lab, row, -1, rng)          # the previous session
            ok, t, detail = one_run(lab, row, i, rng)
            results += ok
            if ok and t is not None:
                times.append(t)
            if verbose:
                print(f"  {row.name} #{i + 1}: {'ok' if ok else 'FAIL'}"
                      + (f" {t:.2f} s" if t is not None else ""), file=sys.stderr)
                if not ok:
                    print(detail, file=sys.stderr)
    finally:
        if holder is not None:
            holder.kill()
        if lab is not None:
            lab.close()
    return {"ok": results, "n": n, "times": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="runs per row (20)")
    parser.add_argument("--rows", help="comma-separated row names: " + ",".join(r.name for r in ROWS))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-v", action="store_true", help="one line per run on stderr")
    opts = parser.parse_args()
    rows = ROWS if not opts.rows else [r for r in ROWS if r.name in opts.rows.split(",")]
    rng = random.Random(opts.seed)
    print(f"# punch matrix: {opts.n} runs per row, default settings (E = 20 s), "
          f"{time.strftime('%Y-%m-%d')}, {platform.node()} {platform.machine()}, "
          f"Linux {platform.release()}, {os.cpu_count()} CPUs")
    print()
    print("| row | success | connect median | connect p95 | max |")
    print("|---|---|---|---|---|")
    for row in rows:
        started = time.monotonic()
        res = run_row(row, opts.n, rng, opts.v)
        times = res["times"]
        med = f"{statistics.median(times):.2f} s" if times else "-"
        p95 = f"{percentile(times, 0.95):.2f} s" if times else "-"
        top = f"{max(times):.2f} s" if times else "-"
        print(f"| {row.label} | {res['ok']}/{res['n']} | {med} | {p95} | {top} |", flush=True)
        if opts.v:
            print(f"  ({row.name}: {time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
