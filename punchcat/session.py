"""One punchcat run: connect → relay or forward, and the ``-k`` loop.

The flow runs one way: :func:`punchcat.connect.connect` punches (the
techniques of :mod:`punchcat.traverse` and the relays), agrees on one
connection and makes it a channel (plain, or authenticated and encrypted
with a secret); :func:`use_link` moves data over it as this side's mode
says.  Around it: one run toward a peer at a time (:mod:`punchcat.peerlock`)
and, with ``-k``, a rest after a wrong secret (:mod:`punchcat.backoff`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from . import sockopts
from .backoff import Backoff
from .connect import Connected, clock, connect
from .endpoints import listen_socket
from .errors import AuthenticationFailed, Interrupted, LinkLost, PunchcatError, check_interrupted
from .forward import Forwarder
from .handshake import Mode, session_tag
from .options import Options
from .peerlock import PeerLock
from .durable import DurableLink, StreamReplaced
from .relay import PipeStream, connect_target
from .schedule import article_plan
from .status import VERBOSE, Reporter, show_progress, transfer_line
from .traverse import hops


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
    given: Connected | None = None       # -k: a fresh link that came while resuming
    while True:
        peers = [p for p in opts.peers if not backoff.resting(p.host, time.monotonic())]
        if not peers:
            _rest_until(backoff.wake([p.host for p in opts.peers], time.monotonic()))
            continue
        started = time.monotonic()
        address = None
        try:
            try:
                done, given = given or connect(opts, peers, routes, reporter,
                                               started + opts.timeout), None
            except AuthenticationFailed as exc:
                address = exc.address
                raise
            address = done.address
            backoff.succeeded(address)
            reporter.info(f"connected {'through the relay' if done.link.via else 'to'} "
                          f"{address} in {time.monotonic() - started:.2f} s")
            sockopts.prepare_link(done.link.sock, opts.keepalive)
            try:
                use_link(done, opts, reporter, listener, peers, routes)
            finally:
                done.link.wait_tidy()
        except StreamReplaced as exc:
            reporter.error(str(exc))
            given = exc.connected           # the next session's link, already agreed
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


def use_link(done: Connected, opts: Options, reporter: Reporter, listener, peers, routes) -> None:
    """Move data over the agreed channel, as this side's mode says; the
    stream outlives a broken link (:mod:`punchcat.durable`)."""
    if opts.mode == Mode.PIPE:
        # stdin/stdout
        flow = PipeStream(sys.stdin.fileno(), sys.stdout.fileno())
        durable = DurableLink(opts, peers, routes, reporter, done, flow,
                              progress=lambda st: show_progress(reporter, st))
        try:
            durable.run()
        finally:
            flow.stats.ended = time.monotonic()
            reporter.clear()
            end_output()
            flow.close()
    elif done.link.peer.mode == Mode.PIPE:
        # -c serving a plain pipe (e.g. ssh's ProxyCommand): one raw session
        try:
            local = connect_target(opts.connect)
        except PunchcatError:
            done.channel.close()
            raise
        reporter.info(f"session to {opts.connect}")
        flow = PipeStream(local.fileno(), local.fileno(),
                          sink_eof=lambda: local.shutdown(socket.SHUT_WR))
        durable = DurableLink(opts, peers, routes, reporter, done, flow)
        try:
            durable.run()
        finally:
            flow.stats.ended = time.monotonic()
            flow.close()
            local.close()
    else:
        # -L or -c against the other: multiplexed sessions
        forwarder = Forwarder(opts.mode == Mode.LISTEN, reporter, listener=listener,
                              target=opts.connect, max_sessions=opts.max_sessions,
                              half_close_timeout=opts.half_close_timeout)
        try:
            DurableLink(opts, peers, routes, reporter, done, forwarder).run()
        finally:
            forwarder.close()
        reporter.info(f"link ended after {forwarder.sessions_served} sessions")
        return
    if opts.stats or opts.level >= VERBOSE:
        reporter.notice(f"{transfer_line(flow.stats)}, {durable.path}")
