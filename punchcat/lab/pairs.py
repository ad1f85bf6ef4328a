"""Running punchcat in the lab: a pair of real processes, one per host.

:func:`run_pair` starts punchcat on both hosts, each naming the other, feeds
their input and collects what each printed, with timings.  The other helpers
stage what a run meets: another program on the candidate ports
(:func:`occupy_ports`), a sender that never ends (:func:`endless_input`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from ..errors import check_interrupted
from .netns import Namespaces as Lab

PUNCHCAT = [sys.executable, "-m", "punchcat"]

_OCCUPY = """
import socket, sys, time
held = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port)); s.listen()
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
time.sleep(3600)
"""


def endless_input() -> tuple[int, int, threading.Event]:
    """A pipe (read end, write end, stop event) kept full of random bytes
    until *stop* is set or the write end is closed: a sender that never ends."""
    r, w = os.pipe()
    stop = threading.Event()

    def feed() -> None:
        block = os.urandom(1 << 16)
        try:
            while not stop.is_set():
                os.write(w, block)
        except OSError:
            pass
    threading.Thread(target=feed, daemon=True).start()
    return r, w, stop


def occupy_ports(lab: Lab, role: str, ports) -> subprocess.Popen:
    """Hold *ports* on host *role* with plain listening sockets (another
    program using them), until the returned process is killed."""
    proc = lab.popen(role, [sys.executable, "-c", _OCCUPY, *map(str, ports)],
                     stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()          # bound
    return proc


@dataclass
class Run:
    """One punchcat process of a pair, once it has ended."""

    side: str
    returncode: int | None = None
    stdout: bytes = b""
    stderr: str = ""
    started: float = 0.0
    first_byte: float | None = None     # seconds from start to first stdout byte
    ended: float = 0.0
    argv: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


def run_pair(lab: Lab, args: list[str] | dict[str, list[str]] = (), *,
             stdin: dict[str, bytes | str] | None = None,
             stdout: dict[str, str] | None = None,
             env: dict[str, dict[str, str]] | None = None,
             wrap: dict[str, list[str]] | None = None,
             delay_b: float = 0.0, timeout: float = 120.0, v6: bool | str = False,
             first: str = "a") -> dict[str, Run]:
    """Run punchcat on both hosts, each naming the other, and wait for both.

    *args* are extra options, the same for both sides or per side.  *stdin*
    per side is bytes (fed through a pipe) or a path (a regular file);
    *stdout* per side is a path to write to (default: a pipe, captured).
    *wrap* per side is a command prefix (e.g. faketime).  *v6*: name the
    peer's IPv6 address, or with ``"both"`` its IPv4 and IPv6 addresses.  Host b starts
    *delay_b* seconds after host a (or, with ``first="b"``, host a that long
    after host b).
    """
    stdin, stdout, env, wrap = stdin or {}, stdout or {}, env or {}, wrap or {}
    runs: dict[str, Run] = {}
    threads = []
    for side in ("a", "b"):
        side_args = args[side] if isinstance(args, dict) else list(args)
        peers = ([lab.peer_of(side), lab.peer_of(side, True)] if v6 == "both"
                 else [lab.peer_of(side, v6)])
        argv = [*wrap.get(side, []), *PUNCHCAT, *side_args, *peers]
        runs[side] = Run(side, argv=argv)
        threads.append(threading.Thread(
            target=_run_one, daemon=True,
            args=(lab, runs[side], stdin.get(side, b""), stdout.get(side),
                  {**os.environ, **env.get(side, {})}, timeout)))
    if first == "b":
        threads.reverse()
    threads[0].start()
    _wait(lambda: False, delay_b)    # the experiment's own parameter
    threads[1].start()
    for thread in threads:
        _wait(lambda: not thread.is_alive(), None)
    return runs


def _wait(done, seconds: float | None) -> None:
    """Until *done()* or *seconds* have passed, noticing a signal whose first
    raise was lost (see :func:`punchcat.errors.check_interrupted`)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while not done():
        left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
        if left <= 0:
            return
        time.sleep(left)
        check_interrupted()


def _run_one(lab: Lab, run: Run, stdin, stdout_path, env, timeout) -> None:
    infile = open(stdin, "rb") if isinstance(stdin, str) else subprocess.PIPE
    outfile = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    run.started = time.monotonic()
    try:
        proc = lab.popen(run.side, run.argv, stdin=infile, stdout=outfile,
                         stderr=subprocess.PIPE, env=env)
    finally:
        for f in (infile, outfile):
            if f is not subprocess.PIPE:
                f.close()
    killer = threading.Timer(timeout, proc.kill)   # a hung punchcat must not hang the caller
    killer.start()
    errs: list[bytes] = []
    reader = threading.Thread(target=lambda: errs.append(proc.stderr.read()), daemon=True)
    reader.start()
    if proc.stdin:
        def feed() -> None:
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        threading.Thread(target=feed, daemon=True).start()
    chunks = []
    if proc.stdout:
        while True:
            chunk = proc.stdout.read1(1 << 16)
            if not chunk:
                break
            if run.first_byte is None:
                run.first_byte = time.monotonic() - run.started
            chunks.append(chunk)
    run.returncode = proc.wait()
    run.ended = time.monotonic()
    killer.cancel()
    reader.join()
    run.stdout = b"".join(chunks)
    run.stderr = b"".join(errs).decode(errors="replace")
