#!/usr/bin/env python3
"""How long the portmap client takes, against miniupnpd in a namespace.

For each protocol: miniupnpd offering only that one, the client asking only
that one (the protocol's own cost), and the client asking all three (what a
user gets: PCP or NAT-PMP silenced by the router costs the discovery
deadline).  Each run is a fresh client process in the lab's host namespace
mapping P TCP ports (32, as punchcat does at every punch); the time is from
PortMapper.start() to the end of the first mapping round, then close()
(removal of the mappings), and every run checks that all were mapped and
nothing is left in the router.  Also whoami() against the full router.
Medians of N (10) runs.

    python benchmarks/portmap_timing.py [-n 10] [-p 32]
"""

from __future__ import annotations

import argparse
import statistics

from punchcat.lab.router import LabClient, PortmapLab, lab_whoami

ROUTERS = {"pcp": dict(natpmp=False, pcp=True, upnp=False),
           "natpmp": dict(natpmp=True, pcp=False, upnp=False),
           "upnp": dict(natpmp=False, pcp=False, upnp=True)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("-p", "--ports", type=int, default=32)
    args = parser.parse_args()
    n, ports = args.n, list(range(40000, 40000 + args.ports))
    rows = []
    with PortmapLab() as lab:
        for protocol, router in ROUTERS.items():
            daemon = lab.start_miniupnpd(**router)
            for asked in ([protocol], ["pcp", "natpmp", "upnp"]):
                maps, closes = [], []
                for _ in range(n):
                    client = LabClient(lab, ports, protocols=asked)
                    assert client.status["protocol"] == protocol, client.status["lines"]
                    assert len(client.status["mappings"]) == len(ports), client.status["lines"]
                    maps.append(client.status["elapsed"])
                    closes.append(client.close()["close_took"])
                    assert lab.forwarded_ports() == []
                rows.append((f"only {protocol}", "+".join(asked), statistics.median(maps),
                             max(maps), statistics.median(closes)))
            daemon.stop()
            lab.daemons.remove(daemon)
        lab.start_miniupnpd()
        for asked in (["pcp", "natpmp", "upnp"],):
            maps, closes = [], []
            for _ in range(n):
                client = LabClient(lab, ports, protocols=asked)
                assert len(client.status["mappings"]) == len(ports), client.status["lines"]
                maps.append(client.status["elapsed"])
                closes.append(client.close()["close_took"])
                assert lab.forwarded_ports() == []
            rows.append(("all three", "+".join(asked), statistics.median(maps), max(maps),
                         statistics.median(closes)))
        who = [lab_whoami(lab)["elapsed"] for _ in range(n)]
    print(f"| router offers | client asks | map {len(ports)} ports, median | max | close, median |")
    print("|---|---|---|---|---|")
    for offers, asks, median, worst, close in rows:
        print(f"| {offers} | {asks} | {median * 1000:.0f} ms | {worst * 1000:.0f} ms "
              f"| {close * 1000:.0f} ms |")
    print(f"\nwhoami() against all three: median {statistics.median(who) * 1000:.0f} ms, "
          f"max {max(who) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
