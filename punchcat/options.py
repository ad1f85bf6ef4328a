"""The command line, checked once and frozen into :class:`Options`.

:func:`parse` holds every check of the command line in one block (as nc
does) and resolves the addresses, so that every usage error is found here,
before any packet is sent.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass

from .endpoints import Address, Endpoint, endpoint, is_own_address, relay_endpoint, resolve
from .errors import PunchcatError, UsageError
from .handshake import Mode
from .secret import check_strength, read_secret_file
from .status import NORMAL, QUIET, VERBOSE

MAX_PORTS = 100
#: PEER addresses raced at once (IPv4 and IPv6, a few of each).
MAX_PEERS = 8
MAX_CLOCK_ERROR = 3600.0
#: A broken path is noticed within about this long (then, by default, punched
#: again): short enough that a link which will not come back by itself is
#: replaced soon, long enough that a congested path is not called broken.
DEFAULT_KEEPALIVE = 15.0
#: How long a broken link is punched again for, by default.
DEFAULT_RESUME_TIMEOUT = 120.0
MAX_RESUME_TIMEOUT = 86400.0
#: --keepalive at most a day (TCP_KEEPIDLE and TCP_USER_TIMEOUT have bounds).
MAX_KEEPALIVE = 86400.0
# -- limits and secrets --
SECRET_ENV = "PUNCHCAT_SECRET"
DEFAULT_MAX_SESSIONS = 64
MAX_MAX_SESSIONS = 1024
DEFAULT_HALF_CLOSE_TIMEOUT = 60.0
MAX_HALF_CLOSE_TIMEOUT = 86400.0
#: --session NAME: a few words both users type alike.
MAX_SESSION_NAME = 64
RELAY_ENV = "PUNCHCAT_RELAY"
#: Relays raced at once.
MAX_RELAYS = 4


@dataclass(frozen=True)
class Options:
    """One run of punchcat, as the command line asks for it."""

    peers: tuple[Address, ...]       # raced; empty only with --plan
    mode: Mode
    listen: Endpoint | None          # -L
    connect: Endpoint | None         # -c
    keep_open: bool
    secret: str | None
    timeout: float
    keepalive: float
    clock_error: float
    run_window: float
    ports: int
    stats: bool
    level: int                       # QUIET, NORMAL or VERBOSE (punchcat.status)
    plan: bool
    port_guessing: bool = True       # the random-port fallback (traverse.birthday)
    port_mapping: bool = True        # ask the home router (traverse.mapped)
    # -- what a peer can make this side hold --
    max_sessions: int = DEFAULT_MAX_SESSIONS          # -L/-c: sessions at once
    half_close_timeout: float = DEFAULT_HALF_CLOSE_TIMEOUT
    session: str = ""                # --session: ports and hello of its own
    relays: tuple[Endpoint, ...] = ()  # --relay: transit relays the user runs
    resume_timeout: float = DEFAULT_RESUME_TIMEOUT   # 0: a broken link ends the run


def parse(*, peers: list[str], timeout: float, clock_error: float, run_window: float,
          ports: int, listen: str | None, connect: str | None, keep_open: bool,
          secret: str | None, secret_file: str | None, stats: bool, keepalive: float,
          ipv4: bool, ipv6: bool, plan: bool, verbose: bool, quiet: bool,
          port_guessing: bool = True, port_mapping: bool = True,
          insecure_secret_file: bool = False, max_sessions: int = DEFAULT_MAX_SESSIONS,
          half_close_timeout: float = DEFAULT_HALF_CLOSE_TIMEOUT,
          session: str = "", allow_weak_secret: bool = False, relays: list[str] = (),
          resume_timeout: float = DEFAULT_RESUME_TIMEOUT,
          closed_stdio: frozenset[int] = frozenset()) -> Options:
    """Check the command line; raise :class:`UsageError` with one line if it cannot work.

    *closed_stdio*: the standard descriptors that were closed at start
    (:data:`punchcat.entry.CLOSED_STDIO`)."""
    if verbose and quiet:
        raise UsageError("-v and -q cannot be used together")
    if not 0 < ports <= MAX_PORTS:
        raise UsageError(f"--ports must be between 1 and {MAX_PORTS}")
    if not timeout > 0 or not math.isfinite(timeout):
        raise UsageError("--timeout must be more than 0 seconds")
    if not 0 < keepalive <= MAX_KEEPALIVE:
        raise UsageError(f"--keepalive must be more than 0 and at most {MAX_KEEPALIVE:g} seconds")
    if ipv4 and ipv6:
        raise UsageError("-4 and -6 cannot be used together")
    if not 0 <= clock_error <= MAX_CLOCK_ERROR:
        raise UsageError(f"--clock-error must be between 0 and {MAX_CLOCK_ERROR:g} seconds")
    if not run_window >= 0 or not math.isfinite(run_window):
        raise UsageError("--run-window must not be negative")
    if not peers and not plan:
        raise UsageError("missing PEER: the other host's public IP address")
    if len(peers) > MAX_PEERS:
        raise UsageError(f"at most {MAX_PEERS} PEER addresses")
    if listen is not None and connect is not None:
        raise UsageError("-L and -c cannot be used together")
    if keep_open and listen is None and connect is None:
        raise UsageError("-k needs -L or -c")
    # -- limits and secrets --
    if not 0 < max_sessions <= MAX_MAX_SESSIONS:
        raise UsageError(f"--max-sessions must be between 1 and {MAX_MAX_SESSIONS}")
    if not 0 < half_close_timeout <= MAX_HALF_CLOSE_TIMEOUT:
        raise UsageError(f"--half-close-timeout must be more than 0 and at most "
                         f"{MAX_HALF_CLOSE_TIMEOUT:g} seconds")
    if secret is None and os.environ.get(SECRET_ENV) == "":
        raise UsageError(f"{SECRET_ENV} is set but empty: unset it, or give it the secret")
    if secret is not None and secret_file is not None:
        raise UsageError("give the secret once: -s/PUNCHCAT_SECRET or --secret-file")
    if insecure_secret_file and secret_file is None:
        raise UsageError("--insecure-secret-file goes with --secret-file")
    if secret_file is not None:
        try:
            secret = read_secret_file(secret_file, insecure=insecure_secret_file)
        except PunchcatError as exc:
            raise UsageError(str(exc)) from None
    if secret is not None and not secret:
        raise UsageError("the secret is empty")
    if allow_weak_secret and secret is None:
        raise UsageError("--allow-weak-secret goes with a secret")
    if secret is not None and not allow_weak_secret:
        check_strength(secret)
    if len(session) > MAX_SESSION_NAME or not session.isprintable():
        raise UsageError(f"--session: at most {MAX_SESSION_NAME} printable characters")
    if not 0 <= resume_timeout <= MAX_RESUME_TIMEOUT:
        raise UsageError(f"--resume-timeout must be between 0 and {MAX_RESUME_TIMEOUT:g} "
                         f"seconds")
    if len(relays) > MAX_RELAYS:
        raise UsageError(f"at most {MAX_RELAYS} relays")
    if relays and secret is None and not plan:
        raise UsageError("--relay needs a secret: the relay is a third party, and only the "
                         "secret keeps it from reading or changing the link (give -s, "
                         f"{SECRET_ENV} or --secret-file; make one with punchcat --gen-code)")

    family = socket.AF_INET if ipv4 else socket.AF_INET6 if ipv6 else socket.AF_UNSPEC
    addresses = [] if plan else [resolve(peer, family=family) for peer in peers]
    for address in addresses:
        if is_own_address(address):
            raise UsageError(f"PEER {address.host} is an address of this host: name the other "
                             f"host's address (to try punchcat on one machine, run "
                             f"punchcat-lab)")
    addresses = list(dict.fromkeys(addresses))           # the same address named twice
    target = endpoint(connect, "-c", "-c host") if connect is not None else None
    relay_list = tuple(dict.fromkeys(relay_endpoint(r) for r in relays)) if not plan else ()
    local = endpoint(listen, "-L", "-L address") if listen is not None else None
    mode = Mode.LISTEN if local else Mode.CONNECT if target else Mode.PIPE
    if mode == Mode.PIPE and not plan:
        if 0 in closed_stdio:
            raise UsageError("standard input is closed (give </dev/null to send nothing)")
        if 1 in closed_stdio:
            raise UsageError("standard output is closed (give >/dev/null to discard what "
                             "the peer sends)")
    return Options(peers=tuple(addresses), mode=mode, listen=local, connect=target, keep_open=keep_open,
                   secret=secret, timeout=timeout, keepalive=keepalive,
                   clock_error=clock_error, run_window=run_window, ports=ports, stats=stats,
                   level=VERBOSE if verbose else QUIET if quiet else NORMAL, plan=plan,
                   port_guessing=port_guessing, port_mapping=port_mapping,
                   max_sessions=max_sessions, half_close_timeout=half_close_timeout,
                   session=session, relays=relay_list, resume_timeout=resume_timeout)
