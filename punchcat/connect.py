"""From the peer's addresses to an authenticated channel: punch, agree, secure.

:func:`punch` runs the techniques toward every peer address at once (the
article's ports with sentinels, or a direct connect for a peer too near for
them; the random-port fallback; the home router's port mapping) and the
relays the user named, and :func:`punchcat.agree.agree` elects one
connection.  :func:`connect` makes it a channel (plain, or authenticated and
encrypted with the secret).  A link through a relay that fails
authentication is not the end: anyone who knows when we punch can present
the relay's token and be paired with us (:mod:`punchcat.traverse.transit`),
so such a link is dropped and the punch goes on, the relay at once; the
run ends with the failure after :data:`RELAY_AUTH_FAILURES` of them (each
such pairing is one online guess of the secret for whoever did it, and a
peer whose secret differs is told within seconds).
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable

from .agree import Link, agree
from .channel import PlainChannel
from .endpoints import Address
from .errors import AuthenticationFailed, PunchcatError, UsageError
from . import resume
from .handshake import FLAG_FRESH_OK, FLAG_RESUME, FLAG_SECRET, NO_TAG, Hello, session_tag
from .resume import prove_plain
from .options import Options
from .secure import HANDSHAKE_TIMEOUT, secure
from .status import Reporter
from .traverse import Technique, hops
from .traverse.birthday import BirthdayPunch
from .traverse.candidates import ArticlePorts
from .traverse.diagnosis import Observations
from .traverse.direct import DirectPunch
from .traverse.mapped import MappedPunch
from .traverse.sentinel import SentinelPunch
from .traverse.transit import JOIN_AFTER, TransitRelay

#: Seconds added to the clock, for testing clock skew (not a user option).
CLOCK_OFFSET_ENV = "PUNCHCAT_CLOCK_OFFSET"
#: Links through a relay that may fail authentication in one run before the
#: run gives up on them (direct techniques go on).
RELAY_AUTH_FAILURES = 3


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


@dataclass
class Connected:
    """An agreed link made a channel: what the session moves data over."""

    link: Link
    channel: object                  # punchcat.channel.PlainChannel or secure.SecureChannel
    leftover: bytes                  # user data that arrived with the commit
    address: str                     # the peer address it came through, or the relay's
    #: While resuming a stream, the peer started afresh instead (-k only).
    fresh: bool = False

    @property
    def path(self) -> str:
        """How the link goes, for the user: "direct" or "relayed via HOST:PORT"."""
        return f"relayed via {self.link.via}" if self.link.via else "direct"

    @property
    def resumable(self) -> bool:
        """Both sides punch again when this link breaks (FLAG_RESUME)."""
        return bool(self.link.local.flags & self.link.peer.flags & FLAG_RESUME)


def techniques(opts: Options, peer: Address, route: hops.HopsResult, reporter: Reporter,
               seen: Observations, port_guessing: bool = True) -> list[Technique]:
    """The punch techniques toward one peer address, all run at once."""
    ports = ArticlePorts(clock, opts.clock_error, opts.run_window, opts.ports, reporter,
                         session=session_tag(opts.session))
    if not route.sentinel:           # the peer is too near for a sentinel
        return [DirectPunch(peer.family, peer.host, ports, reporter, seen)]
    found = [SentinelPunch(peer.family, peer.host, ports, route, reporter, seen)]
    if opts.port_guessing and port_guessing:
        found.append(BirthdayPunch(peer.family, peer.host, ports, route, reporter, seen, clock))
    return found


def punch(opts: Options, peers: list[Address], routes: dict[Address, hops.HopsResult],
          reporter: Reporter, deadline: float, relays: bool = True,
          relay_join: float = JOIN_AFTER, stream: bytes = NO_TAG, port_guessing: bool = True,
          cancelled: Callable[[], bool] = lambda: False, fresh_ok: bool = False) -> Link:
    """Run the techniques toward every address of *peers*, and the relays
    (unless not *relays*; they join after *relay_join* seconds), until one
    verified connection is agreed; *stream* names the stream a new link
    continues (in the hello and the relay's token)."""
    seen = [Observations(p.host, p.family, opts.clock_error, clock, routes[p]) for p in peers]
    found: list[Technique] = []
    for peer, each in zip(peers, seen):
        found += techniques(opts, peer, routes[peer], reporter, each, port_guessing)
    far_v4 = [p.host for p in peers if p.version == 4 and routes[p].sentinel]
    tag = session_tag(opts.session)
    if opts.port_mapping and far_v4:
        ports = ArticlePorts(clock, opts.clock_error, opts.run_window, opts.ports, reporter,
                             quiet=True, session=tag)
        found.append(MappedPunch(socket.AF_INET, far_v4, ports, reporter, seen[0]))
    flags = (FLAG_SECRET if opts.secret else 0) | (FLAG_RESUME if opts.resume_timeout else 0)
    if fresh_ok and stream != NO_TAG:
        flags |= FLAG_FRESH_OK
    hello = Hello.fresh(opts.mode, flags, session=tag, stream=stream)
    if relays:
        ports = ArticlePorts(clock, opts.clock_error, opts.run_window, opts.ports, reporter,
                             quiet=True, session=tag)

        def hopeless() -> bool:
            """Every SYN toward every peer address failed here: no direct path."""
            return all(s.local_errors and not (s.probes or s.connections or s.guesses)
                       for s in seen)
        found += [TransitRelay(relay, ports, hello.side_id, reporter, stream=stream,
                               join_after=relay_join, hopeless=hopeless)
                  for relay in opts.relays]
    return agree(found, hello, deadline, reporter, seen, cancelled, fresh_ok)


def open_channel(link: Link, secret: str | None, reporter: Reporter,
                 resume_key: bytes | None = None):
    """The agreed connection as a channel, and what came with the commit:
    authenticated and encrypted with a secret; on a link that continues a
    stream, proven by its *resume_key* (:mod:`punchcat.resume`)."""
    local, peer = link.local.encode(), link.peer.encode()
    if not secret:
        leftover = link.leftover
        if resume_key is not None:
            leftover = prove_plain(link.sock, resume_key, link.leader, local, peer, leftover,
                                   HANDSHAKE_TIMEOUT)
        else:
            reporter.info("the link is not encrypted (no secret)")
        return PlainChannel(link.sock), leftover
    channel = secure(link.sock, secret, link.leader, local, peer, link.leftover,
                     resume_key=resume_key)
    if resume_key is None:
        reporter.info("secret proven by both sides (SRP-6a); the link is encrypted (TLS 1.2, "
                      "ADH-AES128-GCM-SHA256)")
    return channel, b""


def connect(opts: Options, peers: list[Address], routes: dict[Address, hops.HopsResult],
            reporter: Reporter, deadline: float, *, resume_key: bytes | None = None,
            relays: bool = True, port_guessing: bool = True,
            cancelled: Callable[[], bool] = lambda: False) -> Connected:
    """Punch and open the channel; a relayed link that fails authentication
    is dropped and the punch goes on (module docstring).  With *resume_key*
    the new link continues that stream (named in the hello by its id)."""
    relay_failures = 0
    stream = resume.stream_id(resume_key) if resume_key is not None else NO_TAG
    while True:
        # After a relayed link failed authentication, the relay joins at once:
        # the peer's connection is most likely waiting there already.
        link = punch(opts, peers, routes, reporter, deadline,
                     relays=relays and relay_failures < RELAY_AUTH_FAILURES,
                     relay_join=0.0 if relay_failures else JOIN_AFTER, stream=stream,
                     port_guessing=port_guessing, cancelled=cancelled,
                     fresh_ok=resume_key is not None and opts.keep_open)
        address = _address_of(link, peers)
        fresh = resume_key is not None and link.peer.stream == NO_TAG
        try:
            channel, leftover = open_channel(link, opts.secret, reporter,
                                             None if fresh else resume_key)
        except AuthenticationFailed as exc:
            link.sock.close()
            link.wait_tidy()
            relay_failures += int(bool(link.via))
            if not link.via or opts.keep_open or relay_failures >= RELAY_AUTH_FAILURES:
                raise AuthenticationFailed(str(exc), link.via or address) from None
            reporter.warning(f"{exc} (through the relay {link.via}: the peer's secret differs, "
                             f"or someone else presented our token); trying again")
            continue
        except PunchcatError:
            link.sock.close()
            raise
        return Connected(link, channel, leftover, link.via or address, fresh)


def _address_of(link: Link, peers: list[Address]) -> str:
    """The peer address the link came through (as named on the command line)."""
    try:
        host = ipaddress.ip_address(link.sock.getpeername()[0].split("%")[0])
    except (OSError, ValueError):
        return peers[0].host
    if host.version == 6 and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return next((p.host for p in peers if ipaddress.ip_address(p.host) == host), str(host))
