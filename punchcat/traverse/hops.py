"""How far a sentinel's SYN must go: our own NATs, measured toward the peer.

A sentinel (see :mod:`punchcat.traverse.sentinel`) is a SYN with a small TTL.  It must
pass every NAT on our side, so that our mapping toward the peer opens, and
die before the peer's router, which would answer it with a reset.  A fixed
TTL of 2 assumes exactly one hop to our NAT; behind two NATs (a container or
VM bridge behind a home router, a home router behind a carrier NAT) it dies
inside our own NATs, and toward a peer one or two hops away it reaches the
peer itself.  :func:`discover` finds the right TTL on each host by itself,
without root and without any server, in a few milliseconds (at most
:data:`TIMEOUT`).

Probes
------
One UDP socket per TTL 1 … ``max_ttl`` (and one at :data:`FAR_TTL`), each
connected to the peer's address on one port and sending a few bytes at once,
in increasing TTL order.  With ``IP_RECVERR`` (``IPV6_RECVERR``) the kernel
queues every ICMP error about a socket's datagram on its error queue, with
the ICMP type and code and the address of the node that sent it
(:mod:`punchcat.traverse.errqueue`).
The router at hop *t* answers the TTL-*t* probe with *time exceeded*; the
peer's address answers a probe that reaches it with *port unreachable* (or,
a filtering router, says nothing).  Routers beyond a NAT are reached through
it: the NAT's connection tracking translates their ICMP errors back to us.

Classification (:func:`classify`, pure)
----------------------------------------
*Inside* addresses are private (RFC 1918), shared (100.64.0.0/10),
link-local and loopback, and for IPv6 unique-local, link-local and loopback
(:func:`punchcat.addresses.is_inside`).  The path is read in TTL order up to
its *end*: the first answer from the peer's own address (the peer is ``d``
hops away), or the first refusal (unreachable and the like) from another
address, a *wall* at hop ``w``; a wall with an inside address is our own
firewall, which blocks UDP but tells nothing about the peer.

* **Our side** ends before the first *outside* hop: the first hop that
  answered *time exceeded* from a public address (or a public wall).  The
  hops before it, silent ones included, are ours (``inside``); a NAT that
  does not send time exceeded still forwards the later probes, so its hop
  shows as silence followed by a public hop.  The sentinel must pass them
  all: ``need = max(2, inside + 1)``.  Never less than 2: hop 1 is our
  gateway, which is the firewall even when its address is public (IPv6, a
  public host behind a stateful firewall), and a packet that dies in a
  router never creates connection-tracking state there.
* **The peer's side** starts at the peer's router, the last hop before the
  peer; the sentinel must die before it.  For a peer ``d`` hops away that
  bounds the TTL by ``cap = d - 2``; for a wall at ``w`` (possibly the
  peer's firewall, the peer one hop further) by ``w - 1``.  A peer that only
  answers the far probe is more than ``max_ttl`` hops away: ``max_ttl - 1``.
  Without an answer from the peer it is at least one hop beyond the last hop
  ``L`` that answered *time exceeded*, so ``L - 1`` is safe by the evidence.

Recommendation (``HopsResult.ttls``)
------------------------------------
* Our side known, and ``need`` within the cap: one TTL, ``need`` (it dies at
  the first router outside our NATs).
* Our side known, the peer known and ``need`` beyond the cap (a peer on the
  same link, ``d = 1``; behind our own NAT, ``d = 2``; right behind it): no
  TTL both passes our NATs and dies before the peer's router; no sentinel:
  plain simultaneous open (``ttls == ()``), full-TTL SYNs.  With no router
  between, the peer's kernel answers a SYN on a port it holds no socket for
  with a reset, so SYN_SENT sockets alone meet only if the SYNs cross; a
  listening socket on each port as well (``SO_REUSEPORT``, no NAT between
  to mind its fresh sequence number) connects at once (measured in the lab).
* Our side known, the peer silent and ``need > L - 1`` (nothing heard beyond
  our first outside hop, common where ISP routers are silent): ``need`` all
  the same, flagged inconclusive.  Its sentinel dies at hop ``need``, a
  router that answered *time exceeded*, so it forwards traffic and is not
  the peer's address; the peer's firewall it could be only if the peer sits
  right behind it, which no probe could tell.
* Our side unknown (no outside hop heard: total silence, or silence after
  our inside hops, or our own firewall refusing UDP): two TTLs in rotation,
  ``need`` and ``need + 1``, flagged inconclusive: ``need`` passes the hops
  we saw, ``need + 1`` also a NAT that does not answer.  When the peer's
  distance is known they are capped as above.  Rotate by port
  (:meth:`HopsResult.ttl_for`), not in time: a wrong TTL that draws a reset
  then spoils only its own ports.

Routers limit their ICMP errors (Linux: 6 per destination at once, then one
a second).  A discovery costs each router one, and the peer (or the router
that ends the path) one per probe that reaches it; a second discovery
within seconds may hear silence where the first heard answers (measured:
the 7th in a row hears nothing).  The sentinels themselves spend the budget
of the router where they die.  Discover once per run, before the first
sentinel, and keep the result (``-k`` punches again toward the same peer).

The sentinel's own ICMP error
-----------------------------
The router where the sentinel dies answers with *time exceeded*, which
aborts a socket in SYN_SENT.  :func:`punchcat.sockopts.arm_sentinel` sets
what keeps the sentinel alive; measured in the lab (``tests/test_hops_lab.py``), Linux 6.18:

* IPv4: ``IP_MINTTL`` = the sentinel's TTL.  For an ICMP error Linux compares
  it with the TTL left in the *quoted* header of our SYN: 1 (or 0) at the
  router where it died, ``ttl - t + 1`` at hop ``t``, so an ICMP error
  from any hop but the first is ignored, while the peer's packets,
  which arrive with a TTL near 64, pass.  (Any value from 2 would ignore the
  time exceeded itself; following the TTL also covers the hops before.)
* IPv6: ``IPV6_MINHOPCOUNT`` is compared with the hop limit of the ICMPv6
  packet *itself* as it arrives (63 from a Linux router one hop away), so a
  small value ignores nothing and the sentinel dies.  (In a namespace lab
  over veth it may survive by accident: the ICMP comes back while
  ``connect()`` still holds the socket and the kernel drops it,
  ``TcpExtLockDroppedIcmps``.)  The guard: ``IPV6_MINHOPCOUNT`` = 255 for
  :meth:`HopsResult.guard` seconds after the SYN (a few round trips to the
  hop where it dies), then lifted (0), so that the peer's SYN is
  accepted (:func:`punchcat.sockopts.lift_guard`).  A peer SYN within the
  guard is dropped; the peer sends again.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import json
import selectors
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..addresses import is_inside, is_near, unmapped
from ..routes import on_link
from .errqueue import AVAILABLE, LOCAL, TIME_EXCEEDED, probe_socket, read_errors

#: What a hop's answer was: the kind of its error (:mod:`.errqueue`:
#: time exceeded, unreachable, other, local), or none at all.
SILENT = "silent"

#: Probes TTL 1 … MAX_TTL, and one more at FAR_TTL to learn whether the peer
#: answers at all from farther away.
MAX_TTL = 8
FAR_TTL = 64
#: The TTL when nothing could be probed (what punchcat used before).
FALLBACK_TTL = 2
#: Hard deadline of a discovery (seconds).
TIMEOUT = 0.2
#: Probes leave this far apart, lowest TTL first, and none once the peer (or
#: a wall) has answered: a router answers only ~6 ICMP errors at once per
#: destination, then one a second, and a second run soon after needs them.
STAGGER = 0.002
#: Once the answer cannot change any more, wait this long (or half the time
#: spent so far, if longer) for stragglers that only add detail.
GRACE = 0.01
#: How long an IPv6 sentinel ignores ICMP errors after its SYN (HopsResult.guard).
GUARD_MIN = 0.02
GUARD_MAX = 0.25
GUARD_UNKNOWN = 0.1
#: Default UDP port probed on the peer (traceroute's first port).
PORT = 33434
PAYLOAD = b"punchcat hops"

def nearby(peer: str) -> str | None:
    """Why *peer* is on our own network (a private address, or on one of our
    links), so that no NAT lies between and no discovery is needed; else None."""
    ip = ipaddress.ip_address(peer.split("%")[0])
    if is_near(ip):
        return "a private address, on this network"
    if not ip.is_loopback and on_link(ip):
        return "on this host's link"
    return None


# -- classification -------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    """What the probe with this TTL provoked."""

    ttl: int
    address: str | None = None     # who answered; None: nobody (silence)
    kind: str = SILENT
    rtt: float | None = None       # seconds from sending to the answer
    icmp: tuple[int, int] | None = None    # ICMP (type, code)
    error: str | None = None       # errno name of a local error (kind LOCAL)

    @property
    def answered(self) -> bool:
        return self.address is not None and self.kind != LOCAL


@dataclass(frozen=True)
class HopsResult:
    """The path toward the peer as far as it tells, and the sentinel TTLs."""

    peer: str
    hops: tuple[Hop, ...]          # TTL 1 … max_ttl, silent ones included
    far: Hop | None                # the probe at FAR_TTL
    inside: int                    # hops on our side (at least this many when not inside_known)
    inside_known: bool             # a hop outside our side (or the peer) was heard
    peer_distance: int | None      # TTL at which the peer's own address answered
    peer_answered: bool            # the peer answered any probe (the far one too)
    wall: int | None               # a public hop that refused the probes (not the peer)
    blocked: int | None            # a hop of ours that refused them (our own firewall)
    ttls: tuple[int, ...]          # recommended sentinel TTLs; (): no sentinel
    conclusive: bool
    reason: str
    elapsed: float = 0.0
    probed: bool = True            # False: no probe could be sent at all
    near: str = ""                 # why the peer is on our own network (no probe sent)
    own_router: bool = False       # the peer's address answered from hop 1, off our link:
                                   # it is our own router's (both hosts behind one NAT)

    @property
    def sentinel(self) -> bool:
        """False: no TTL fits, use plain simultaneous open (full-TTL SYNs)."""
        return bool(self.ttls)

    def ttl_for(self, port: int) -> int | None:
        """The sentinel TTL for *port* (rotating over ports), None for none."""
        return self.ttls[port % len(self.ttls)] if self.ttls else None

    def guard(self, ttl: int | None = None) -> float:
        """Seconds to keep an IPv6 sentinel deaf to ICMP after its SYN (see
        the module docstring): a few round trips to the hop where a sentinel
        of *ttl* (default: the first recommended) dies, within
        [GUARD_MIN, GUARD_MAX]; GUARD_UNKNOWN when that hop never answered."""
        ttl = ttl if ttl is not None else (self.ttls[0] if self.ttls else None)
        hop = self.hops[ttl - 1] if ttl and 0 < ttl <= len(self.hops) else None
        if hop is None or hop.rtt is None:
            return GUARD_UNKNOWN
        return min(GUARD_MAX, max(GUARD_MIN, 4 * hop.rtt))

    def describe(self) -> str:
        """One line for ``-v`` and the failure line, e.g. "2 NATs on this side
        (172.17.0.1, 192.168.1.1); sentinel TTL 3"."""
        if self.near:
            return f"peer is {self.near}; no sentinels: plain simultaneous open"
        if self.own_router:
            return ("the peer's address is this side's own router (it answered from hop 1); "
                    "no sentinels: plain simultaneous open")
        ours = [h.address or "silent" for h in self.hops[:self.inside]]
        ours += ["?"] * (self.inside - len(ours))
        if self.peer_distance is not None and not self.sentinel and self.inside_known:
            d = self.peer_distance
            where = ("same link" if d == 1 else
                     "via " + ", ".join(h.address or "silent" for h in self.hops[:d - 1]))
            return (f"peer is {_plural(d, 'hop')} away ({where}); "
                    f"no sentinels: plain simultaneous open")
        if self.inside_known:
            if self.inside:
                side = f"{_plural(self.inside, 'NAT')} on this side ({', '.join(ours)})"
            else:
                first = next((h for h in self.hops if h.answered), None)
                public = f" (hop 1, {first.address}, is public)" if first and first.ttl == 1 else ""
                side = "no NAT on this side" + public
        elif self.inside:
            side = (f"at least {_plural(self.inside, 'NAT')} on this side ({', '.join(ours)}), " +
                    (f"hop {self.blocked} refuses the probes" if self.blocked is not None
                     else "nothing heard from outside"))
        elif not self.probed:
            side = "could not probe the path"
        else:
            side = "no hop answered"
        if self.peer_distance is not None:
            side += f", peer {_plural(self.peer_distance, 'hop')} away"
        elif self.wall is not None:
            side += f", hop {self.wall} refuses the probes"
        elif self.peer_answered:
            side += f", peer more than {_plural(len(self.hops), 'hop')} away"
        if not self.ttls:
            return f"{side}; no sentinels: plain simultaneous open"
        if len(self.ttls) == 1:
            tail = f"sentinel TTL {self.ttls[0]}"
        else:
            tail = f"sentinel TTLs {', '.join(map(str, self.ttls))} in rotation"
        return f"{side}; {tail}" + ("" if self.conclusive else " (unsure)")

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["line"] = self.describe()
        return data


def _hop_table(hops: Iterable[Hop], max_ttl: int | None) -> tuple[Hop, ...]:
    """TTL 1 … max_ttl, the first answer per TTL, silence where there is none."""
    by_ttl: dict[int, Hop] = {}
    for hop in hops:
        if hop.ttl >= 1 and (hop.ttl not in by_ttl or not by_ttl[hop.ttl].answered):
            by_ttl[hop.ttl] = hop
    top = max_ttl if max_ttl is not None else max(by_ttl, default=0)
    return tuple(by_ttl.get(t, Hop(t)) for t in range(1, top + 1))


def _same(address: str | None, peer: ipaddress._BaseAddress) -> bool:
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return unmapped(ip) == peer


def classify(peer: str, hops: Iterable[Hop], far: Hop | None = None,
             max_ttl: int | None = None, elapsed: float = 0.0) -> HopsResult:
    """Read the probes' answers (module docstring) and recommend sentinel TTLs."""
    peer_ip = unmapped(ipaddress.ip_address(peer))
    table = _hop_table(hops, max_ttl)
    top = len(table)

    # The end of the path: the peer itself, or a hop that refuses the probes.
    distance = wall = blocked = None
    for hop in table:
        if not hop.answered:
            continue
        if _same(hop.address, peer_ip):
            distance = hop.ttl
            break
        if hop.kind != TIME_EXCEEDED:
            if is_inside(hop.address):
                blocked = hop.ttl          # our own firewall: says nothing of the peer
            else:
                wall = hop.ttl
            break
    end = distance or wall or blocked or top + 1
    heard = [h for h in table[:end - 1] if h.answered]          # all time exceeded
    outside = [h.ttl for h in heard if not is_inside(h.address)]
    if wall is not None:
        outside.append(wall)
    last_heard = max((h.ttl for h in heard), default=0)
    far_from_peer = far is not None and far.answered and _same(far.address, peer_ip)
    peer_answered = distance is not None or far_from_peer

    # Our side.
    if outside:
        inside, inside_known = min(outside) - 1, True
    elif distance is not None and all(h.answered for h in table[:distance - 1]):
        inside, inside_known = distance - 1, True       # every hop before it is ours
    else:
        inside, inside_known = max(last_heard, blocked or 0), False
    need = max(2, inside + 1)

    # The peer's side: the highest TTL that surely dies before the peer's router.
    if distance is not None:
        # An IPv4 peer's public address is mostly its NAT router: dying
        # before it is enough.  An IPv6 peer is a host behind its firewall.
        cap = distance - (2 if peer_ip.version == 6 else 1)
        why_cap = f"the peer answered at hop {distance}"
    elif wall is not None:
        cap, why_cap = wall - 1, f"hop {wall} refused the probe for the peer"
    elif far_from_peer and blocked is None:
        cap, why_cap = top - 1, f"the peer is more than {top} hops away"
    else:
        cap, why_cap = None, None
    strict = last_heard - 1                      # safe by the evidence when cap is None

    ours = f"our {_plural(inside, 'hop')}" if inside else "our gateway"
    if inside_known:
        if distance == 1:
            ttls, conclusive = (), True
            reason = ("the peer answered at hop 1, on our own link: no router between, no "
                      "sentinel, plain simultaneous open")
        elif cap is not None and need > cap:
            ttls, conclusive = (), True
            reason = (f"{why_cap}: no TTL passes {ours} and dies before the peer's router; "
                      f"no sentinel, plain simultaneous open")
        elif cap is not None:
            ttls, conclusive = (need,), True
            reason = (f"TTL {need} passes {ours} and dies at hop {need}; {why_cap}, so "
                      f"TTL {cap} is the most that dies before its router")
        else:
            ttls, conclusive = (need,), need <= strict
            if conclusive:
                reason = (f"TTL {need} passes {ours} and dies at hop {need}; hop {last_heard} "
                          f"still forwarded, so the peer's router is hop {last_heard} at the "
                          f"nearest")
            else:
                reason = (f"TTL {need} passes {ours} and dies at hop {need}, a router that "
                          f"answered time exceeded; nothing was heard beyond hop {last_heard}, "
                          f"so the peer's distance is unknown")
    else:
        ttls = tuple(t for t in (need, need + 1) if cap is None or t <= cap)
        conclusive = False
        if blocked is not None:
            seen = f"hop {blocked} (ours) refuses the probes"
        elif inside:
            seen = f"{_plural(inside, 'hop')} of ours answered, none outside"
        else:
            seen = "no hop answered"
        if ttls:
            reason = (f"{seen}: TTL {need} passes {ours}, {need + 1} also a NAT behind that "
                      f"does not answer; both, in rotation over ports")
            if len(ttls) < 2:
                reason += f" ({why_cap}: TTL {cap} at most)"
        else:
            reason = f"{seen}; {why_cap}: no sentinel, plain simultaneous open"
    return HopsResult(peer=str(peer_ip), hops=table, far=far, inside=inside,
                      inside_known=inside_known, peer_distance=distance,
                      peer_answered=peer_answered, wall=wall, blocked=blocked, ttls=ttls,
                      conclusive=conclusive, reason=reason, elapsed=elapsed)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- probing --------------------------------------------------------------------

def _family_of(peer: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(peer).version == 6 else socket.AF_INET


def discover(peer: str, port: int = PORT, max_ttl: int = MAX_TTL,
             timeout: float = TIMEOUT, far_ttl: int | None = FAR_TTL) -> HopsResult:
    """Probe the path toward *peer* (an IPv4 or IPv6 address) and classify it.

    Sends one UDP datagram per TTL 1 … *max_ttl* (and one at *far_ttl*) to
    *peer*:*port*, :data:`STAGGER` apart and none after the path's end has
    answered, and reads the ICMP errors they provoke; returns as
    soon as more answers cannot change the recommendation (after
    :data:`GRACE`), at the latest after *timeout* seconds.  Needs no
    privileges.  Never raises for network conditions: a probe that cannot be
    sent is a hop that did not answer.
    """
    near = nearby(peer)
    if near:
        return HopsResult(peer=peer, hops=(), far=None, inside=0, inside_known=True,
                          peer_distance=None, peer_answered=False, wall=None, blocked=None,
                          ttls=(), conclusive=True, near=near, probed=False,
                          reason=f"the peer is {near}: no NAT between, no sentinel")
    if not AVAILABLE:
        return dataclasses.replace(
            classify(peer, [], max_ttl=max_ttl), ttls=(FALLBACK_TTL,), conclusive=False,
            probed=False, reason=f"no ICMP error queue on this system; TTL {FALLBACK_TTL}, "
                                 f"which assumes one NAT hop")
    family = _family_of(peer)
    started = time.monotonic()
    deadline = started + timeout
    ttls = list(range(1, max_ttl + 1)) + ([far_ttl] if far_ttl and far_ttl > max_ttl else [])
    answers: dict[int, Hop] = {}
    sent: dict[int, float] = {}
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    unsent = list(ttls)
    next_send = started

    def send(ttl: int) -> None:
        try:
            sock = probe_socket(family, ttl)
        except OSError:
            return
        socks.append(sock)
        try:
            sock.connect((peer, port))
            sent[ttl] = time.monotonic()
            sock.send(PAYLOAD)
        except OSError as exc:
            answers[ttl] = Hop(ttl, None, LOCAL,
                               error=errno.errorcode.get(exc.errno, str(exc.errno)))
            return
        sel.register(sock, selectors.EVENT_READ, ttl)

    try:
        grace_until = None
        while True:
            now = time.monotonic()
            probes = [answers.get(t, Hop(t)) for t in range(1, max_ttl + 1)]
            result = classify(peer, probes, answers.get(far_ttl), max_ttl, now - started)
            if result.peer_distance or result.wall:
                unsent.clear()           # the path's end answered: spare its ICMP budget
            while unsent and now >= next_send:
                send(unsent.pop(0))
                next_send += STAGGER
            if not unsent and _finished(result, answers, max_ttl, far_ttl,
                                        [t for t in ttls if t in sent or t in answers]):
                break
            if result.conclusive:
                if grace_until is None:
                    grace_until = now + max(GRACE, 0.5 * (now - started))
            else:
                grace_until = None
            until = min(deadline, grace_until or deadline)
            if now >= until or (not sel.get_map() and not unsent):
                break
            wait = min(until, next_send) if unsent else until
            for key, _events in sel.select(max(0.0, wait - now)):
                sock, ttl = key.fileobj, key.data
                for err in read_errors(sock):
                    if ttl in answers and answers[ttl].answered:
                        continue
                    icmp = err.from_icmp
                    answers[ttl] = Hop(ttl, err.offender if icmp else None, err.kind,
                                       rtt=time.monotonic() - sent[ttl],
                                       icmp=(err.type, err.code) if icmp else None,
                                       error=None if icmp else errno.errorcode.get(err.errno))
                try:
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)   # clear sk_err
                    sock.recv(256)                  # a UDP answer, if anything did answer
                except OSError:
                    pass
                if ttl in answers:
                    sel.unregister(sock)
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    elapsed = time.monotonic() - started
    probes = [answers.get(t, Hop(t)) for t in range(1, max_ttl + 1)]
    result = classify(peer, probes, answers.get(far_ttl), max_ttl, elapsed)
    if result.peer_distance == 1 and not on_link(ipaddress.ip_address(peer)):
        result = dataclasses.replace(result, own_router=True)
    if not sent or all(answers.get(t, Hop(t)).kind == LOCAL for t in sent):
        # Nothing went out (no IP_RECVERR on this system, no route, a local
        # firewall): no evidence at all; the TTL punchcat always used.
        errors = sorted({h.error for h in answers.values() if h.error})
        result = dataclasses.replace(
            result, ttls=(FALLBACK_TTL,), conclusive=False, probed=False,
            reason=f"the probes could not be sent ({', '.join(errors) or 'no socket'}); "
                   f"TTL {FALLBACK_TTL}, which assumes one NAT hop")
    return result


def _finished(result: HopsResult, answers: dict[int, Hop], max_ttl: int,
              far_ttl: int | None, ttls: list[int]) -> bool:
    """Every probe has answered, or the path's end is known with every hop before it."""
    if all(t in answers for t in ttls):
        return True
    end = result.peer_distance or result.wall
    return end is not None and all(t in answers for t in range(1, end))


# -- python -m punchcat.traverse.hops ----------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m punchcat.traverse.hops",
        description="Probe the path toward PEER and print the sentinel TTL punchcat would use.")
    parser.add_argument("peer", help="the peer's IPv4 or IPv6 address")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--max-ttl", type=int, default=MAX_TTL)
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run this many discoveries, one after the other")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between repeated discoveries")
    parser.add_argument("--json", action="store_true", help="one JSON object per discovery")
    args = parser.parse_args(argv)
    try:
        ipaddress.ip_address(args.peer)
    except ValueError:
        parser.error(f"not an IP address: {args.peer}")
    elapsed = []
    for i in range(args.repeat):
        if i and args.pause:
            time.sleep(args.pause)
        result = discover(args.peer, args.port, args.max_ttl, args.timeout)
        elapsed.append(result.elapsed)
        if args.json:
            print(json.dumps(result.as_dict()), flush=True)
        else:
            print(f"{result.describe()}  [{result.elapsed * 1000:.1f} ms]", flush=True)
    if args.repeat > 1 and not args.json:
        print(f"median {statistics.median(elapsed) * 1000:.1f} ms over {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
