"""One punchcat run: punch → agree → channel → relay or forward, and the ``-k`` loop.

The flow runs one way: the techniques (:mod:`punchcat.traverse`) produce
connections, :func:`punchcat.agree.agree` elects one, :func:`open_channel`
makes it a channel (plain, or authenticated and encrypted with a secret),
and :func:`use_link` moves data over it as this side's mode says.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import socket
import sys
import time

from . import sockopts
from .agree import Link, agree
from .channel import PlainChannel
from .endpoints import Address, listen_socket
from .backoff import Backoff
from .errors import (AuthenticationFailed, Interrupted, PunchcatError, UsageError,
                     check_interrupted)
from .forward import serve
from .handshake import FLAG_SECRET, Hello, Mode, session_tag
from .options import Options
from .peerlock import PeerLock
from .relay import relay, serve_raw
from .schedule import article_plan
from .secure import secure
from .status import VERBOSE, Reporter, show_progress, transfer_line
from .traverse import Technique, hops
from .traverse.birthday import BirthdayPunch
from .traverse.candidates import ArticlePorts
from .traverse.diagnosis import Observations
from .traverse.direct import DirectPunch
from .traverse.mapped import MappedPunch
from .traverse.sentinel import SentinelPunch

#: Seconds added to the clock, for testing clock skew (not a user option).
CLOCK_OFFSET_ENV = "PUNCHCAT_CLOCK_OFFSET"


def clock() -> float:
    """Unix time, shifted by $PUNCHCAT_CLOCK_OFFSET when testing skew."""
    raw = os.environ.get(CLOCK_OFFSET_ENV, "0") or "0"
    try:
        offset = float(raw)
    except ValueError:
        offset = math.nan
    if not math.isfinite(offset):
        raise UsageError(f"{CLOCK_OFFSET_ENV} must be a number of seconds, not {raw!r}")
    return time.time() + offset


def show_plan(opts: Options) -> None:
    """--plan: the article's plan at this instant, as JSON on stdout."""
    the_plan = article_plan(clock(), opts.clock_error, opts.run_window, opts.ports,
                            session_tag(opts.session))
    print(json.dumps(the_plan.as_dict()))  # stdout-ok: the plan is the output


def run(opts: Options, reporter: Reporter) -> None:
    """Punch, agree and use the link; with ``-k`` again and again until interrupted."""
    listener = listen_socket(opts.listen) if opts.listen is not None else None
    try:
        with PeerLock([p.host for p in opts.peers], opts.session, reporter):
            _run(opts, reporter, listener)
    finally:
        if listener is not None:
            listener.close()


def _run(opts: Options, reporter: Reporter, listener) -> None:
    """The run inside the session lock: find the path once, then punch and use links."""
    now = clock()
    plan = article_plan(now, opts.clock_error, opts.run_window, opts.ports,
                        session_tag(opts.session))
    reporter.info(f"bucket {plan.bucket} (the article's rendezvous would be in "
                  f"{plan.rendezvous - now:.0f} s), ports {' '.join(map(str, plan.ports))}")
    # Once per run: routers answer few ICMP errors in a row, and the path
    # toward the same peer does not change between -k sessions.
    routes = {}
    for peer in opts.peers:
        routes[peer] = route = hops.discover(peer.host)
        reporter.info(f"path to {peer.host}: {route.describe()} "
                      f"[{route.elapsed * 1000:.0f} ms]")
    backoff = Backoff()                 # -k: rest after a peer failed the secret
    while True:
        peers = [p for p in opts.peers if not backoff.resting(p.host, time.monotonic())]
        if not peers:
            _rest_until(backoff.wake([p.host for p in opts.peers], time.monotonic()))
            continue
        started = time.monotonic()
        address = None
        try:
            link = punch(opts, peers, routes, reporter, started + opts.timeout)
            address = _address_of(link, peers)
            reporter.info(f"connected to {address} in {time.monotonic() - started:.2f} s")
            sockopts.prepare_link(link.sock, opts.keepalive)
            try:
                use_link(link, opts, reporter, listener,
                         authenticated=lambda: backoff.succeeded(address))
            finally:
                link.wait_tidy()
        except AuthenticationFailed as exc:
            if not opts.keep_open:
                raise
            rest = backoff.failed(address, time.monotonic())
            reporter.error(f"{exc} (from {address}, {backoff.failures[address]} in a "
                           f"row): punching toward it again in {rest:g} s")
        except PunchcatError as exc:
            if not opts.keep_open or isinstance(exc, Interrupted):
                raise
            reporter.error(str(exc))
        if not opts.keep_open:
            return
        check_interrupted()
        reporter.info("link ended; punching again (-k)")


def _rest_until(when: float) -> None:
    """Wait until *when* (monotonic), noticing a signal."""
    while (left := when - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
        check_interrupted()


def _address_of(link: Link, peers: list[Address]) -> str:
    """The peer address the link came through (as named on the command line)."""
    try:
        host = ipaddress.ip_address(link.sock.getpeername()[0].split("%")[0])
    except (OSError, ValueError):
        return peers[0].host
    if host.version == 6 and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return next((p.host for p in peers if ipaddress.ip_address(p.host) == host), str(host))


def techniques(opts: Options, peer: Address, route: hops.HopsResult, reporter: Reporter,
               seen: Observations) -> list[Technique]:
    """The punch techniques toward one peer address, all run at once."""
    ports = ArticlePorts(clock, opts.clock_error, opts.run_window, opts.ports, reporter,
                         session=session_tag(opts.session))
    if not route.sentinel:           # the peer is too near for a sentinel
        return [DirectPunch(peer.family, peer.host, ports, reporter, seen)]
    found = [SentinelPunch(peer.family, peer.host, ports, route, reporter, seen)]
    if opts.port_guessing:
        found.append(BirthdayPunch(peer.family, peer.host, ports, route, reporter, seen, clock))
    return found


def punch(opts: Options, peers: list[Address], routes: dict[Address, hops.HopsResult],
          reporter: Reporter, deadline: float) -> Link:
    """Run the techniques toward every address of *peers* until one verified
    connection is agreed."""
    seen = [Observations(p.host, p.family, opts.clock_error, clock, routes[p]) for p in peers]
    found: list[Technique] = []
    for peer, each in zip(peers, seen):
        found += techniques(opts, peer, routes[peer], reporter, each)
    far_v4 = [p.host for p in peers if p.version == 4 and routes[p].sentinel]
    tag = session_tag(opts.session)
    if opts.port_mapping and far_v4:
        ports = ArticlePorts(clock, opts.clock_error, opts.run_window, opts.ports, reporter,
                             quiet=True, session=tag)
        found.append(MappedPunch(socket.AF_INET, far_v4, ports, reporter, seen[0]))
    hello = Hello.fresh(opts.mode, FLAG_SECRET if opts.secret else 0, session=tag)
    return agree(found, hello, deadline, reporter, seen)


def open_channel(link: Link, secret: str | None, reporter: Reporter):
    """The agreed connection as a channel, and the user data that came with
    the commit: authenticated and encrypted with a secret."""
    if not secret:
        reporter.info("the link is not encrypted (no secret)")
        return PlainChannel(link.sock), link.leftover
    channel = secure(link.sock, secret, link.leader, link.local.encode(), link.peer.encode(),
                     link.leftover)
    reporter.info("secret proven by both sides (SRP-6a); the link is encrypted (TLS 1.2, "
                  "ADH-AES128-GCM-SHA256)")
    return channel, b""


def end_output() -> None:
    """Give stdout's reader its end of file now: tidying the routers may keep
    this process a few seconds more (``punchcat PEER | tar x`` must not wait
    for it).  stdout becomes /dev/null, so a late write cannot fail."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(null)


def use_link(link: Link, opts: Options, reporter: Reporter, listener,
             authenticated=lambda: None) -> None:
    """Move data over the agreed connection, as this side's mode says;
    *authenticated* is called once the peer has proven the secret."""
    try:
        channel, leftover = open_channel(link, opts.secret, reporter)
    except PunchcatError:
        link.sock.close()
        raise
    authenticated()
    if opts.mode == Mode.PIPE:
        # stdin/stdout
        try:
            stats = relay(channel, sys.stdin.fileno(), sys.stdout.fileno(), leftover,
                          progress=lambda st: show_progress(reporter, st))
        finally:
            reporter.clear()
            end_output()
    elif link.peer.mode == Mode.PIPE:
        # -c serving a plain pipe (e.g. ssh's ProxyCommand): one raw session
        stats = serve_raw(channel, opts.connect, reporter, leftover)
    else:
        # -L or -c against the other: multiplexed sessions
        served = serve(channel, opts.mode == Mode.LISTEN, reporter, listener=listener,
                       target=opts.connect, initial=leftover, max_sessions=opts.max_sessions,
                       half_close_timeout=opts.half_close_timeout)
        reporter.info(f"link ended after {served} sessions")
        return
    if opts.stats or opts.level >= VERBOSE:
        reporter.notice(transfer_line(stats))
