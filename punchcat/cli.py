"""The ``punchcat`` command: punch through both NATs, then pipe stdin/stdout."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sys
import time
from typing import Optional

import typer

from . import __version__
from .channel import PlainChannel, keep_alive
from .errors import Interrupted, PunchcatError, UsageError, catch_signals, check_interrupted
from .forward import serve
from .handshake import FLAG_SECRET, Hello, Link, Mode, establish
from .punch import Puncher
from .relay import Stats, pipe
from .schedule import article_plan
from .secure import generate_secret, read_secret_file, secure
from .status import NORMAL, QUIET, VERBOSE, Reporter

#: Seconds added to the clock, for testing clock skew (not a user option).
CLOCK_OFFSET_ENV = "PUNCHCAT_CLOCK_OFFSET"
MAX_PORTS = 100
MAX_CLOCK_ERROR = 3600.0
DEFAULT_KEEPALIVE = 60.0

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        print(f"punchcat {__version__}")  # stdout-ok: asked for
        raise typer.Exit(0)


def _gen_secret(value: bool) -> None:
    if value:
        print(generate_secret())  # stdout-ok: asked for
        raise typer.Exit(0)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def describe(stats: Stats) -> str:
    rate = (stats.sent + stats.received) / max(stats.duration, 1e-6)
    return (f"sent {stats.sent} bytes, received {stats.received} bytes in "
            f"{stats.duration:.2f} s ({human(rate)}/s)")


def clock() -> float:
    """Unix time, shifted by $PUNCHCAT_CLOCK_OFFSET when testing skew."""
    raw = os.environ.get(CLOCK_OFFSET_ENV, "0") or "0"
    try:
        offset = float(raw)
    except ValueError:
        raise UsageError(f"{CLOCK_OFFSET_ENV} must be a number of seconds, not {raw!r}") from None
    return time.time() + offset


def parse_endpoint(spec: str, option: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (HOST may be ``[v6]``); HOST defaults to 127.0.0.1."""
    host, sep, port = spec.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not host or ":" in host:
        raise UsageError(f"{option} {spec}: expected [HOST:]PORT (an IPv6 HOST in brackets)")
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise UsageError(f"{option} {spec}: the port must be a number from 1 to 65535")
    return host, int(port)


def listen_socket(spec: str) -> socket.socket:
    """Bind and listen on ``[BIND:]PORT`` now, before any punching (exit 2 if taken)."""
    host, port = parse_endpoint(spec, "-L")
    family, address = resolve(host, what="-L address")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def resolve(peer: str, what: str = "PEER", family: int = socket.AF_UNSPEC) -> tuple[int, str]:
    """The address family and numeric address of a host (exit 2 if unknown).

    A name with addresses of both families resolves to IPv4, the same choice
    on both sides; ``-4``/``-6`` choose.
    """
    if re.fullmatch(r"[0-9.]+", peer) or ":" in peer:
        try:
            address = ipaddress.ip_address(peer.strip("[]"))
        except ValueError:
            raise UsageError(f"{what} {peer} is not a valid IP address") from None
        wanted = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(family)
        if wanted and address.version != wanted:
            raise UsageError(f"-{wanted} was given but {what} {peer} is an "
                             f"IPv{address.version} address")
        return (socket.AF_INET if address.version == 4 else socket.AF_INET6), str(address)
    try:
        infos = socket.getaddrinfo(peer, None, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot resolve {what} {peer}: {reason}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)   # IPv4 first
    found_family, _, _, _, sockaddr = infos[0]
    return found_family, sockaddr[0]


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
        help="How far each clock may be off (the two may differ by twice this); "
             "a bucket lasts 2E+2 s."),
    run_window: float = typer.Option(
        10.0, "--run-window", metavar="SECONDS",
        help="Least time before the article's rendezvous, else its next bucket is used."),
    ports: int = typer.Option(
        16, "--ports", metavar="N", help="Number of candidate ports."),
    listen: Optional[str] = typer.Option(
        None, "-L", "--listen", metavar="[BIND:]PORT",
        help="Accept local clients on BIND:PORT (default BIND 127.0.0.1) and carry each "
             "to the peer, which must run with -c."),
    connect: Optional[str] = typer.Option(
        None, "-c", "--connect", metavar="[HOST:]PORT",
        help="Connect each session from the peer to HOST:PORT (default HOST 127.0.0.1)."),
    keep_open: bool = typer.Option(
        False, "-k", "--keep-open",
        help="With -L or -c: after a link ends, punch again and keep serving."),
    secret: Optional[str] = typer.Option(
        None, "-s", "--secret", envvar="PUNCHCAT_SECRET", show_envvar=True, metavar="SECRET",
        help="Shared secret: both sides prove they know it, and the link is encrypted. "
             "Prefer PUNCHCAT_SECRET or --secret-file: a command line is visible to other "
             "local users."),
    secret_file: Optional[str] = typer.Option(
        None, "--secret-file", metavar="PATH", help="Read the shared secret from PATH."),
    gen_secret: bool = typer.Option(
        False, "--gen-secret", callback=_gen_secret, is_eager=True,
        help="Print a fresh random secret and exit."),
    stats: bool = typer.Option(
        False, "--stats", help="At exit, report bytes each way, duration and rate on stderr."),
    keepalive: float = typer.Option(
        DEFAULT_KEEPALIVE, "--keepalive", metavar="SECONDS",
        help="Notice a vanished peer or a dead path within about this long, and keep NAT "
             "mappings alive."),
    ipv4: bool = typer.Option(False, "-4", help="Use IPv4 only."),
    ipv6: bool = typer.Option(False, "-6", help="Use IPv6 only."),
    plan: bool = typer.Option(
        False, "--plan",
        help="Print the article's bucket, rendezvous and ports (and the other active "
             "ports) as JSON and exit."),
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
    if not keepalive > 0:
        raise UsageError("--keepalive must be more than 0 seconds")
    if ipv4 and ipv6:
        raise UsageError("-4 and -6 cannot be used together")
    if not 0 <= clock_error <= MAX_CLOCK_ERROR:
        raise UsageError(f"--clock-error must be between 0 and {MAX_CLOCK_ERROR:g} seconds")
    if not run_window >= 0:
        raise UsageError("--run-window must not be negative")
    if peer is None and not plan:
        raise UsageError("missing PEER: the other host's public IP address")
    if listen is not None and connect is not None:
        raise UsageError("-L and -c cannot be used together")
    if keep_open and listen is None and connect is None:
        raise UsageError("-k needs -L or -c")
    if secret is not None and secret_file is not None:
        raise UsageError("give the secret once: -s/PUNCHCAT_SECRET or --secret-file")
    if secret_file is not None:
        try:
            secret = read_secret_file(secret_file)
        except PunchcatError as exc:
            raise UsageError(str(exc)) from None
    if secret is not None and not secret:
        raise UsageError("the secret is empty")

    reporter = Reporter(VERBOSE if verbose else QUIET if quiet else NORMAL)
    report_stats = stats or verbose
    now = clock()
    the_plan = article_plan(now, clock_error, run_window, ports)
    if plan:
        print(json.dumps(the_plan.as_dict()))  # stdout-ok: the plan is the output
        return
    family, address = resolve(peer, family=socket.AF_INET if ipv4 else
                              socket.AF_INET6 if ipv6 else socket.AF_UNSPEC)
    target = None
    if connect is not None:
        host, port = parse_endpoint(connect, "-c")
        target = (resolve(host, what="-c host")[1], port)
    listener = listen_socket(listen) if listen is not None else None
    mode = Mode.LISTEN if listener else Mode.CONNECT if target else Mode.PIPE

    reporter.info(f"bucket {the_plan.bucket} (the article's rendezvous would be in "
                  f"{the_plan.rendezvous - now:.0f} s), ports {' '.join(map(str, the_plan.ports))}")
    flags = FLAG_SECRET if secret else 0
    try:
        while True:
            started = time.monotonic()
            puncher = Puncher(family, address, clock, clock_error, run_window, ports, reporter,
                              started + timeout)
            try:
                link = establish(puncher, Hello.fresh(mode, flags), started + timeout, reporter)
                reporter.info(f"connected to {address} in {time.monotonic() - started:.2f} s")
                keep_alive(link.sock, keepalive)
                use_link(link, mode, reporter, listener, target, secret, report_stats)
            except PunchcatError as exc:
                if not keep_open or isinstance(exc, Interrupted):
                    raise
                reporter.error(str(exc))
            if not keep_open:
                return
            check_interrupted()
            reporter.info("link ended; punching again (-k)")
    finally:
        if listener is not None:
            listener.close()


def open_channel(link: Link, secret: str | None, reporter):
    """The agreed connection as a channel: authenticated and encrypted with a secret."""
    if not secret:
        reporter.info("the link is not encrypted (no secret)")
        return PlainChannel(link.sock), link.leftover
    channel = secure(link.sock, secret, link.leader, link.local.encode(), link.peer.encode(),
                     link.leftover, (link.local.side_id, link.peer.side_id))
    reporter.info("secret proven by both sides; the link is encrypted (TLS 1.2, "
                  "ADH-AES128-GCM-SHA256)")
    return channel, b""


def use_link(link: Link, mode: Mode, reporter, listener, target, secret: str | None,
             report_stats: bool) -> None:
    """Move data over the agreed connection, as this side's mode says."""
    try:
        channel, leftover = open_channel(link, secret, reporter)
    except PunchcatError:
        link.sock.close()
        raise
    peer_mode = Mode(link.peer.mode)
    if mode == Mode.PIPE:
        try:
            stats = pipe(channel, sys.stdin.fileno(), sys.stdout.fileno(), leftover,
                         tick=lambda st: show_progress(reporter, st))
        finally:
            reporter.clear()
        if report_stats:
            reporter.always(describe(stats))
    elif peer_mode == Mode.PIPE:
        # -c serving a plain pipe (e.g. ssh's ProxyCommand): one raw session.
        try:
            local = socket.create_connection(target, timeout=10)
        except OSError as exc:
            channel.close()
            raise PunchcatError(f"cannot connect to {target[0]}:{target[1]}: "
                                f"{exc.strerror or exc}") from None
        local.settimeout(None)
        reporter.info(f"session to {target[0]}:{target[1]}")
        try:
            stats = pipe(channel, local.fileno(), local.fileno(), leftover,
                         sink_eof=lambda: local.shutdown(socket.SHUT_WR))
        finally:
            local.close()
        if report_stats:
            reporter.always(describe(stats))
    else:
        served = serve(channel, mode == Mode.LISTEN, reporter, listener=listener,
                       target=target, initial=leftover)
        reporter.info(f"link ended after {served} sessions")


def show_progress(reporter, stats: Stats) -> None:
    """The live progress line (terminal stderr only), once a transfer lasts."""
    if stats.duration < 1.0:
        return
    rate = (stats.sent + stats.received) / stats.duration
    reporter.status(f"punchcat: sent {human(stats.sent)}, received {human(stats.received)}, "
                    f"{human(rate)}/s, {stats.duration:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line ``punchcat: …`` on errors, never a traceback."""
    catch_signals()
    try:
        status = app(args=argv, prog_name="punchcat", standalone_mode=False)
    except Interrupted as exc:
        return exc.exit_code                 # asked for: no message, as nc
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
