#!/usr/bin/env python3
"""Throughput of punchcat against iperf3, OpenBSD nc and socat across the NAT lab.

Builds the lab (needs root, ip, nft, iperf3, nc, socat), gives iperf3, nc
and socat a port forward on host b's router so they can cross it, and moves
SIZE bytes from host a to host b, in the same run for every tool:

* iperf3: one TCP stream, memory to memory (``-n SIZE``): the path's limit,
  to which every other row is a ratio;

* file -> pipe: ``tool < file`` on a, ``tool | sink`` on b;
* pipe -> pipe: ``cat file | tool`` on a, ``tool | sink`` on b;
* mux: one bulk session through ``punchcat -L`` (a) and ``-c`` (b), from a
  client that sendfile()s the file into the -L port to a target that reads
  with a 4 MiB buffer (``tcp_ends.py``: fast ends, so the mux is measured).

MiB/s is counted by the sink from its first byte to EOF (so punching time is
not counted; iperf3's receiver counts its own); CPU is user+sys of the tool
on each host (from wait4() of each tool, a direct child of this script;
/usr/bin/time for iperf3; /proc for the long-running -L/-c processes), per GiB moved; "machine busy" is the share of all this
machine's CPU time in use meanwhile (both hosts, the routers and the
kernel's work for every hop: 100 % means the lab's CPUs, not the tool, set
the rate); RSS is the larger peak of the two.  Then the
latency of a small echo through -L/-c, idle and while a bulk transfer runs
on another session.  ``--baseline DIR`` adds the punchcat of another source
tree (a checkout of an older commit) to the pipe rows, run alternately with
this one, for a before/after in the same run.

    python benchmarks/throughput.py                 # 1 GiB, 5 repetitions
    python benchmarks/throughput.py --size 256 -n 3 --only file-pipe
    python benchmarks/throughput.py --only file-pipe,secret --baseline /tmp/old-tree
    python benchmarks/throughput.py --pin --only file-pipe,pipe-pipe,mux,secret
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

from punchcat.lab import PUNCHCAT, Lab
from sink import cpu_ticks

HERE = os.path.dirname(os.path.abspath(__file__))

PORT = 5001
SINK = [sys.executable, os.path.join(HERE, "sink.py")]
TIME = "/usr/bin/time"


class PinnedLab(Lab):
    """The lab with host a's processes on CPU 0 and host b's on CPU 1 (``--pin``):
    two hosts on one machine no longer take each other's CPU, as two real
    hosts would not (``benchmarks/placement.py`` measures what that sharing
    costs).  The routers' and links' kernel work runs where the packets go."""

    def command(self, role: str, argv: list[str]) -> list[str]:
        cpu = {"a": "0", "b": "1"}.get(role)
        return super().command(role, ["taskset", "-c", cpu, *argv] if cpu else argv)


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark setup timed out")
        time.sleep(0.02)


def listening(lab, role, port):
    return f":{port} " in lab.sh(role, "ss -ltnH")


def timed(cmd: str, out: str) -> str:
    return f"{TIME} -f '%U %S %M' -o {out} {cmd}"


def read_time(path: str) -> tuple[float, int]:
    user, system, rss = open(path).read().split()[-3:]
    return float(user) + float(system), int(rss)


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and peak RSS (KiB) of a running process, from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1])
    return cpu, rss


def busy_since(start: tuple[int, int]) -> float:
    """The share of this machine's CPU time in use since *start* (cpu_ticks)."""
    busy, total = cpu_ticks()
    return (busy - start[0]) / max(total - start[1], 1)


def tree_env(tree: str | None, secret: bool) -> dict | None:
    """The environment of a punchcat run: another source *tree* first on
    the path, and the secret."""
    env = dict(os.environ)
    if secret:
        env["PUNCHCAT_SECRET"] = "benchmark secret"
    if tree:
        env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    return env


def one_iperf_run(lab: Lab, size_mib: int, tmp: str) -> dict:
    """iperf3, one stream, memory to memory, across the same path."""
    rtime, stime = os.path.join(tmp, "ir.time"), os.path.join(tmp, "is.time")
    server = lab.popen("b", ["sh", "-c", timed(f"iperf3 -s -1 -p {PORT}", rtime)],
                       stdout=subprocess.DEVNULL)
    wait_for(lambda: listening(lab, "b", PORT))
    ticks = cpu_ticks()
    done = subprocess.run(lab.command("a", ["sh", "-c", timed(
        f"iperf3 -c {lab.peer_of('a')} -p {PORT} -n {size_mib}M -J", stime)]),
        capture_output=True, text=True, timeout=600)
    server.wait(timeout=60)
    busy = busy_since(ticks)
    result = json.loads(done.stdout)["end"]["sum_received"]
    cpu_s, rss_s = read_time(stime)
    cpu_r, rss_r = read_time(rtime)
    return {"mib_s": result["bytes"] / result["seconds"] / 2 ** 20,
            "bytes": size_mib * 2 ** 20, "cpu_a": cpu_s, "cpu_b": cpu_r,
            "rss": max(rss_s, rss_r), "busy": busy}


def reap(proc: subprocess.Popen) -> tuple[float, int]:
    """Wait for *proc*, a direct child (the lab's ``ip netns exec`` and
    ``taskset`` exec the tool in place); its CPU seconds and peak RSS (KiB)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def one_pipe_run(lab: Lab, tool: str, case: str, path: str, tmp: str, secret: bool,
                 tree: str | None = None) -> dict:
    """Each tool a direct child of this script, its CPU from wait4(): under a
    parent that waits for it (/usr/bin/time, a shell that does not exec),
    punchcat on this machine fell into the low mode in most runs (README)."""
    peer_b, peer_a = lab.peer_of("a"), lab.peer_of("b")
    env = tree_env(tree, secret)
    senders = {"nc": ["nc", "-N", peer_b, str(PORT)],
               "socat": ["socat", "-u", "STDIN", f"TCP:{peer_b}:{PORT}"],
               "punchcat": [*PUNCHCAT, "-q", peer_b]}
    receivers = {"nc": ["nc", "-l", str(PORT)],
                 "socat": ["socat", "-u", f"TCP-LISTEN:{PORT},reuseaddr", "STDOUT"],
                 "punchcat": [*PUNCHCAT, "-q", peer_a]}
    report = os.path.join(tmp, "sink.json")
    if os.path.exists(report):
        os.unlink(report)
    # (python -m puts the working directory first on the path: a baseline
    # tree must be the working directory too)
    r, w = os.pipe()
    receiver = lab.popen("b", receivers[tool], stdin=subprocess.DEVNULL, stdout=w, env=env,
                         cwd=tree)
    sink = lab.popen("b", [*SINK, report], stdin=r)
    os.close(r)
    os.close(w)
    if tool != "punchcat":
        wait_for(lambda: listening(lab, "b", PORT))
    cat = None
    if case == "file-pipe":
        with open(path, "rb") as source:
            sender = lab.popen("a", senders[tool], stdin=source, env=env, cwd=tree)
    else:
        cat = lab.popen("a", ["cat", path], stdout=subprocess.PIPE)
        sender = lab.popen("a", senders[tool], stdin=cat.stdout, env=env, cwd=tree)
        cat.stdout.close()
    cpu_s, rss_s = reap(sender)
    cpu_r, rss_r = reap(receiver)
    sink.wait(timeout=600)
    if cat is not None:
        cat.wait(timeout=60)
    result = json.load(open(report))
    return {"mib_s": result["bytes"] / result["seconds"] / 2 ** 20, "bytes": result["bytes"],
            "cpu_a": cpu_s, "cpu_b": cpu_r, "rss": max(rss_s, rss_r), "busy": result["busy"]}


def one_mux_run(lab: Lab, path: str, tmp: str, secret: bool, tree: str | None = None) -> dict:
    env = tree_env(tree, secret)
    report = os.path.join(tmp, "sink.json")
    if os.path.exists(report):
        os.unlink(report)
    ends = [sys.executable, os.path.join(HERE, "tcp_ends.py")]
    target = lab.popen("b", [*ends, "sink", "7000", report], stdout=subprocess.PIPE)
    target.stdout.readline()
    log = os.path.join(tmp, "l.log")
    server = lab.popen("b", [*PUNCHCAT, "-q", "-c", "7000", lab.peer_of("b")], env=env,
                       stderr=subprocess.DEVNULL, cwd=tree)
    client = lab.popen("a", [*PUNCHCAT, "-v", "-L", "8000", lab.peer_of("a")], env=env,
                       stderr=open(log, "w"), cwd=tree)
    wait_for(lambda: "connected to" in open(log).read())
    sender = lab.popen("a", [*ends, "send", "8000", path])
    sender.wait(timeout=600)
    target.wait(timeout=600)
    usage = [proc_usage(p.pid) for p in (server, client)]
    for p in (client, server):
        p.terminate()
        p.wait(timeout=10)
    result = json.load(open(report))
    return {"mib_s": result["bytes"] / result["seconds"] / 2 ** 20, "bytes": result["bytes"],
            "cpu_a": usage[1][0], "cpu_b": usage[0][0], "rss": max(u[1] for u in usage),
            "busy": result["busy"]}


def echo_latency(lab: Lab, path: str, tmp: str, bulk: bool) -> dict:
    """Round trips of 64-byte echoes through -L/-c, idle or beside a bulk session."""
    server_py = os.path.join(HERE, "mux_target.py")
    target = lab.popen("b", [sys.executable, server_py, "7000"], stdout=subprocess.PIPE)
    target.stdout.readline()
    log = os.path.join(tmp, "e.log")
    server = lab.popen("b", [*PUNCHCAT, "-q", "-c", "7000", lab.peer_of("b")])
    client = lab.popen("a", [*PUNCHCAT, "-v", "-L", "8000", lab.peer_of("a")],
                       stderr=open(log, "w"))
    wait_for(lambda: "connected to" in open(log).read())
    probe = subprocess.run(lab.command("a", [sys.executable, os.path.join(HERE, "mux_client.py"),
                                             "8000", path if bulk else "-"]),
                           capture_output=True, text=True, timeout=600)
    for p in (client, server, target):
        p.terminate()
        p.wait(timeout=10)
    return json.loads(probe.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB to move (1024)")
    parser.add_argument("-n", type=int, default=5, help="repetitions (5)")
    parser.add_argument("--only", help="comma-separated: file-pipe,pipe-pipe,mux,secret,echo,"
                                       "nc (nc and socat rows)")
    parser.add_argument("--pin", action="store_true",
                        help="host a's processes on CPU 0, host b's on CPU 1 (two CPUs or more)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also the punchcat of this source tree, run alternately")
    opts = parser.parse_args()
    parts = set((opts.only or "file-pipe,pipe-pipe,mux,secret,echo,nc").split(","))
    print(f"# throughput: {opts.size} MiB, {opts.n} repetitions, median; "
          f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, Linux {platform.release()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
          f"{'; a pinned to CPU 0, b to CPU 1' if opts.pin else ''}")
    trees = {"": None, "@baseline": opts.baseline} if opts.baseline else {"": None}
    with tempfile.TemporaryDirectory() as tmp, (PinnedLab() if opts.pin else Lab()) as lab:
        path = os.path.join(tmp, "data")
        with open(path, "wb") as f:
            for _ in range(opts.size):
                f.write(os.urandom(1 << 20))
        lab.forward_port("b", PORT)
        rows = [("memory", {"iperf3": [one_iperf_run(lab, opts.size, tmp)
                                       for _ in range(opts.n)]})]
        for case in ("file-pipe", "pipe-pipe"):
            if case not in parts:
                continue
            tools = ["nc", "socat"] if "nc" in parts else []
            for suffix in trees:
                tools += [f"punchcat{suffix}"]
                if "secret" in parts:
                    tools += [f"punchcat+secret{suffix}"]
            runs = {t: [] for t in tools}
            for _ in range(opts.n):
                for tool in tools:
                    name, _, tree = tool.partition("@")
                    runs[tool].append(one_pipe_run(lab, name.split("+")[0], case, path, tmp,
                                                   secret="+secret" in name,
                                                   tree=trees.get("@" + tree) if tree else None))
            rows.append((case, runs))
        if "mux" in parts:
            runs = {}
            for suffix, tree in trees.items():
                runs[f"punchcat -L/-c{suffix}"] = []
                if "secret" in parts:
                    runs[f"punchcat -L/-c +secret{suffix}"] = []
            for _ in range(opts.n):
                for tool in runs:
                    tree = trees["@baseline"] if tool.endswith("@baseline") else None
                    runs[tool].append(one_mux_run(lab, path, tmp, "+secret" in tool, tree))
            rows.append(("mux", runs))
        print()
        print("| path | tool | MiB/s | × iperf3 | min-max | CPU s/GiB (a / b) | machine busy "
              "| peak RSS |")
        print("|---|---|---|---|---|---|---|---|")
        limit = None
        for case, runs in rows:
            for tool, results in runs.items():
                ok = [r for r in results if r["bytes"] == opts.size * 2 ** 20]
                if not ok:
                    print(f"| {case} | {tool} | incomplete | | | | | |")
                    continue
                rates = [r["mib_s"] for r in ok]
                rate = statistics.median(rates)
                if tool == "iperf3":
                    limit = rate
                per_gib = opts.size / 1024
                cpu_a = statistics.median(r["cpu_a"] for r in ok) / per_gib
                cpu_b = statistics.median(r["cpu_b"] for r in ok) / per_gib
                rss = max(r["rss"] for r in ok) / 1024
                busy = statistics.median(r["busy"] for r in ok)
                print(f"| {case} | {tool} | {rate:.0f} | {rate / limit:.2f} | "
                      f"{min(rates):.0f}-{max(rates):.0f} | {cpu_a:.2f} / {cpu_b:.2f} | "
                      f"{busy:.0%} | {rss:.0f} MB |", flush=True)
        if "echo" in parts:
            idle = echo_latency(lab, path, tmp, bulk=False)
            busy = echo_latency(lab, path, tmp, bulk=True)
            print()
            print("| echo through -L/-c (64 bytes) | median | p99 |")
            print("|---|---|---|")
            for label, r in (("idle link", idle), ("beside a bulk session", busy)):
                print(f"| {label} | {r['median_ms']:.2f} ms | {r['p99_ms']:.2f} ms |")
            if busy.get("bulk_mib_s"):
                print(f"\n(the bulk session moved {busy['bulk_mib_s']:.0f} MiB/s meanwhile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
