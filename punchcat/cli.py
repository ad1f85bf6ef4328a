"""The ``punchcat`` command: punch through both NATs, then pipe stdin/stdout."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from typing import Optional

import typer

from . import __version__
from .errors import Interrupted, PunchcatError, UsageError
from .handshake import Hello, establish
from .punch import Puncher
from .relay import pipe
from .schedule import article_plan
from .status import NORMAL, QUIET, VERBOSE, Reporter

#: Seconds added to the clock, for testing clock skew (not a user option).
CLOCK_OFFSET_ENV = "PUNCHCAT_CLOCK_OFFSET"
MAX_PORTS = 100
MAX_CLOCK_ERROR = 3600.0

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        print(f"punchcat {__version__}")  # stdout-ok: asked for
        raise typer.Exit(0)


def clock() -> float:
    """Unix time, shifted by $PUNCHCAT_CLOCK_OFFSET when testing skew."""
    raw = os.environ.get(CLOCK_OFFSET_ENV, "0") or "0"
    try:
        offset = float(raw)
    except ValueError:
        raise UsageError(f"{CLOCK_OFFSET_ENV} must be a number of seconds, not {raw!r}") from None
    return time.time() + offset


def resolve(peer: str) -> tuple[int, str]:
    """The address family and numeric address of PEER (exit 2 if unknown)."""
    try:
        infos = socket.getaddrinfo(peer, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot resolve {peer}: {reason}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)   # IPv4 first
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[0]


@app.command()
def punchcat(
    peer: Optional[str] = typer.Argument(
        None, metavar="PEER", show_default=False,
        help="The other host's public IP address (or a hostname)."),
    timeout: float = typer.Option(
        180.0, "-w", "--timeout", metavar="SECONDS",
        help="Give up if no connection is made within this many seconds."),
    clock_error: float = typer.Option(
        20.0, "--clock-error", metavar="SECONDS",
        help="Largest clock difference tolerated; sets the bucket length (2E+2)."),
    run_window: float = typer.Option(
        10.0, "--run-window", metavar="SECONDS",
        help="Least time left before the rendezvous, else the next bucket is used."),
    ports: int = typer.Option(
        16, "--ports", metavar="N", help="Number of candidate ports."),
    plan: bool = typer.Option(
        False, "--plan", help="Print the bucket, rendezvous and ports as JSON and exit."),
    verbose: bool = typer.Option(
        False, "-v", "--verbose", help="Report bucket, ports, connections and winner on stderr."),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="Print nothing on stderr but errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True,
        help="Print the version and exit."),
) -> None:
    """Connect to PEER through both NATs and pipe stdin to it and it to stdout.

    Run it on both hosts at about the same time, each naming the other's
    public address.
    """
    # One block for every check of the command line (as nc does).
    if verbose and quiet:
        raise UsageError("-v and -q cannot be used together")
    if not 0 < ports <= MAX_PORTS:
        raise UsageError(f"--ports must be between 1 and {MAX_PORTS}")
    if not timeout > 0:
        raise UsageError("--timeout must be more than 0 seconds")
    if not 0 <= clock_error <= MAX_CLOCK_ERROR:
        raise UsageError(f"--clock-error must be between 0 and {MAX_CLOCK_ERROR:g} seconds")
    if not run_window >= 0:
        raise UsageError("--run-window must not be negative")
    if peer is None and not plan:
        raise UsageError("missing PEER: the other host's public IP address")

    reporter = Reporter(VERBOSE if verbose else QUIET if quiet else NORMAL)
    now = clock()
    the_plan = article_plan(now, clock_error, run_window, ports)
    if plan:
        print(json.dumps(the_plan.as_dict()))  # stdout-ok: the plan is the output
        return
    family, address = resolve(peer)

    started = time.monotonic()
    deadline = started + timeout
    reporter.info(f"bucket {the_plan.bucket} (the article's rendezvous would be in "
                  f"{the_plan.rendezvous - now:.0f} s), ports {' '.join(map(str, the_plan.ports))}")
    puncher = Puncher(family, address, clock, clock_error, run_window, ports, reporter, deadline)
    link = establish(puncher, Hello.fresh(), deadline, reporter)
    reporter.info(f"connected to {address} in {time.monotonic() - started:.2f} s")
    stats = pipe(link.sock, sys.stdin.fileno(), sys.stdout.fileno(), link.leftover)
    reporter.info(f"sent {stats.sent} bytes, received {stats.received} bytes "
                  f"in {stats.duration:.2f} s")


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum, signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line ``punchcat: …`` on errors, never a traceback."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        status = app(args=argv, prog_name="punchcat", standalone_mode=False)
    except PunchcatError as exc:
        Reporter(QUIET).error(str(exc))
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except typer.TyperException as exc:     # the command line did not parse
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        Reporter(QUIET).error(f"{message} (see punchcat --help)")
        return getattr(exc, "exit_code", 2)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
