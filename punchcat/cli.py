"""The ``punchcat`` command: argv → :class:`~punchcat.options.Options` → a session → an exit status."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from . import __version__, options, session
from .entry import CLOSED_STDIO, run_app, show_tracebacks
from .secret import give_secret
from .status import NORMAL, Reporter
from .whoami import whoami_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        print(f"punchcat {__version__}")  # stdout-ok: asked for
        raise typer.Exit(0)


@app.command()
def punchcat(
    peers: Optional[List[str]] = typer.Argument(
        None, metavar="PEER...", show_default=False,
        help="The other host's public IP address (or a hostname); several (its IPv4 and IPv6 "
             "addresses) are raced, the first to connect wins."),
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
        False, "--gen-secret",
        help="Print a fresh random secret and exit (with --secret-file: write it to a new "
             "file only you can read)."),
    stats: bool = typer.Option(
        False, "--stats", help="At exit, report bytes each way, duration, rate and the paths "
                               "taken on stderr."),
    keepalive: float = typer.Option(
        options.DEFAULT_KEEPALIVE, "--keepalive", metavar="SECONDS",
        help="Notice a vanished peer or a broken path within about this long, and keep NAT "
             "mappings alive."),
    resume_timeout: float = typer.Option(
        options.DEFAULT_RESUME_TIMEOUT, "--resume-timeout", metavar="SECONDS",
        help="When the link breaks, punch again for up to this long and carry on where the "
             "stream stood, nothing lost; 0 ends the run instead."),
    no_port_mapping: bool = typer.Option(
        False, "--no-port-mapping",
        help="Do not ask the home router (PCP, NAT-PMP, UPnP-IGD) to open the candidate ports."),
    whoami: bool = typer.Option(
        False, "--whoami",
        help="Print this host's public addresses (IPv4 as the home router reports it, global "
             "IPv6), one a line, and exit: what to give the peer."),
    no_port_guessing: bool = typer.Option(
        False, "--no-port-guessing",
        help="Never start the random-port fallback (a burst of SYNs at the peer's ports, "
             "which an intrusion detector may take for a port scan)."),
    ipv4: bool = typer.Option(False, "-4", help="Use IPv4 only."),
    ipv6: bool = typer.Option(False, "-6", help="Use IPv6 only."),
    plan: bool = typer.Option(
        False, "--plan",
        help="Print the article's bucket, rendezvous and ports (and the other active "
             "ports) as JSON and exit."),
    verbose: int = typer.Option(
        0, "-v", "--verbose", count=True,
        help="Report bucket, ports, connections and winner on stderr; twice (-vv): also "
             "the traceback of an internal error."),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="Print nothing on stderr but errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True,
        help="Print the version and exit."),
    # -- limits and secrets --
    gen_code: bool = typer.Option(
        False, "--gen-code",
        help="Print a fresh short code to read out, like 48210-93755-62183, and exit "
             "(with --secret-file: write it to a new file only you can read)."),
    insecure_secret_file: bool = typer.Option(
        False, "--insecure-secret-file",
        help="Use a --secret-file that other users can read or change."),
    max_sessions: int = typer.Option(
        options.DEFAULT_MAX_SESSIONS, "--max-sessions", metavar="N",
        help="With -L or -c: most sessions at once; -L accepts no more, -c refuses more."),
    half_close_timeout: float = typer.Option(
        options.DEFAULT_HALF_CLOSE_TIMEOUT, "--half-close-timeout", metavar="SECONDS",
        help="With -L or -c: reset a session that one side has ended once it has moved "
             "nothing for this long."),
    session_name: str = typer.Option(
        "", "--session", metavar="NAME", show_default=False,
        help="Name this session (both sides the same name): it gets ports and a hello of "
             "its own, so that several sessions between the same two hosts run at once."),
    allow_weak_secret: bool = typer.Option(
        False, "--allow-weak-secret",
        help="Use a secret weaker than punchcat's floor (40 bits by its estimate)."),
    relay: Optional[List[str]] = typer.Option(
        None, "--relay", envvar=options.RELAY_ENV, show_envvar=True, metavar="HOST[:PORT]",
        help="Also go through this magic-wormhole transit relay (one you run; port 4001 "
             "unless given) when no direct path wins within 2 s; needs a secret.  May be "
             "given more than once."),
) -> None:
    """Connect to PEER through both NATs and pipe stdin to it and it to stdout.

    Run it on both hosts at about the same time, each naming the other's
    public address.
    """
    if verbose >= 2:
        show_tracebacks()
    if gen_secret or gen_code:
        give_secret(gen_code, gen_secret, secret_file)
        return
    if whoami:
        raise typer.Exit(whoami_command(Reporter(NORMAL)))
    opts = options.parse(
        peers=peers or [], timeout=timeout, clock_error=clock_error, run_window=run_window,
        ports=ports, listen=listen, connect=connect, keep_open=keep_open, secret=secret,
        secret_file=secret_file, stats=stats, keepalive=keepalive, ipv4=ipv4, ipv6=ipv6,
        plan=plan, verbose=verbose > 0, quiet=quiet, port_guessing=not no_port_guessing,
        port_mapping=not no_port_mapping, insecure_secret_file=insecure_secret_file,
        max_sessions=max_sessions, half_close_timeout=half_close_timeout, session=session_name,
        allow_weak_secret=allow_weak_secret, relays=relay or [], resume_timeout=resume_timeout,
        closed_stdio=frozenset(CLOSED_STDIO))
    if opts.plan:
        session.show_plan(opts)
        return
    session.run(opts, Reporter(opts.level))


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line ``punchcat: …`` on errors, never a traceback."""
    return run_app(app, "punchcat", argv, capture_stdout=True)


if __name__ == "__main__":
    sys.exit(main())
