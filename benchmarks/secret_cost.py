#!/usr/bin/env python3
"""What proving the secret costs: CPU per side and wall time, no network, no root.

Three measurements, each the median of --runs (20):

* srp: the SRP exchange alone (punchcat.srp, 3072-bit group, SHA-256), the
  CPU time of each side's steps (server: challenge, verify; client:
  ephemeral, respond, confirm);
* scrypt: what version 1 spent per side on its proof (one scrypt with
  n=2^14, r=8, p=1 and two HMAC-SHA256), for comparison;
* secure: secure() end to end over a socketpair (TLS handshake and the
  proof exchange), the wall time and each side's thread CPU time; with
  --rtt the bytes pass a relay that delays each direction by half of it.
  Run it with PUNCHCAT_TREE=<another checkout> to measure that version.

    python benchmarks/secret_cost.py [--runs 20] [--rtt MS]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import queue
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.environ.get("PUNCHCAT_TREE")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from punchcat.handshake import FLAG_SECRET, Hello  # noqa: E402
from punchcat.secure import secure  # noqa: E402

LEADER, FOLLOWER = Hello(b"\xee" * 16, flags=FLAG_SECRET), Hello(b"\x11" * 16, flags=FLAG_SECRET)


def cpu(fn):
    start = time.thread_time()
    result = fn()
    return result, time.thread_time() - start


def srp_once() -> tuple[float, float]:
    from punchcat import srp
    binding, hellos = os.urandom(12), LEADER.encode() + FOLLOWER.encode()
    server, t_server = cpu(lambda: srp.SrpServer(b"correct horse"))
    client, t_client = cpu(lambda: srp.SrpClient(b"correct horse"))
    response, t = cpu(lambda: client.respond(server.challenge, binding, hellos))
    t_client += t
    m2, t = cpu(lambda: server.verify(response, binding, hellos))
    t_server += t
    _, t = cpu(lambda: client.confirm(m2))
    return t_server, t_client + t


def scrypt_once() -> float:
    def work():
        key = hashlib.scrypt(b"correct horse", salt=b"punchcat-auth-v1" + os.urandom(32),
                             n=2 ** 14, r=8, p=1, maxmem=32 * 1024 * 1024, dklen=32)
        for role in (b"leader", b"follower"):
            hmac.new(key, b"punchcat proof v1|" + role + b"|" + os.urandom(12),
                     hashlib.sha256).digest()
    return cpu(work)[1]


def delayed_pair(rtt: float):
    """Two connected sockets whose bytes take *rtt*/2 seconds each way."""
    a, a_inner = socket.socketpair()
    b, b_inner = socket.socketpair()

    def pump(src, dst):
        q: queue.Queue = queue.Queue()

        def deliver():
            while (item := q.get()) is not None:
                due, data = item
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    dst.sendall(data)
                except OSError:
                    return
            dst.close()
        threading.Thread(target=deliver, daemon=True).start()
        try:
            while data := src.recv(65536):
                q.put((time.monotonic() + rtt / 2, data))
        except OSError:
            pass
        q.put(None)
    threading.Thread(target=pump, args=(a_inner, b_inner), daemon=True).start()
    threading.Thread(target=pump, args=(b_inner, a_inner), daemon=True).start()
    return a, b


def secure_once(rtt: float) -> tuple[float, float, float]:
    a, b = delayed_pair(rtt) if rtt else socket.socketpair()
    out = {}

    def side(name, sock, leader):
        local, peer = (LEADER, FOLLOWER) if leader else (FOLLOWER, LEADER)
        out[name] = cpu(lambda: secure(sock, "correct horse", leader, local.encode(),
                                       peer.encode(), b"", (LEADER.side_id, FOLLOWER.side_id)))
    start = time.perf_counter()
    threads = [threading.Thread(target=side, args=("leader", a, True)),
               threading.Thread(target=side, args=("follower", b, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    a.close()
    b.close()
    return wall, out["leader"][1], out["follower"][1]


def ms(values) -> str:
    return f"{statistics.median(values) * 1000:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                        help="round-trip time added for the secure() runs")
    args = parser.parse_args()
    runs = args.runs
    try:
        import punchcat.srp  # noqa: F401
        srp_runs = [srp_once() for _ in range(runs)]
        print(f"srp     server CPU {ms([r[0] for r in srp_runs])}   "
              f"client CPU {ms([r[1] for r in srp_runs])}")
    except ImportError:
        print("srp     (not in this tree)")
    print(f"scrypt  per side CPU {ms([scrypt_once() for _ in range(runs)])}")
    sec = [secure_once(args.rtt / 1000) for _ in range(runs)]
    print(f"secure  (rtt {args.rtt:g} ms)  wall {ms([r[0] for r in sec])}   leader CPU {ms([r[1] for r in sec])}   "
          f"follower CPU {ms([r[2] for r in sec])}")


if __name__ == "__main__":
    main()
