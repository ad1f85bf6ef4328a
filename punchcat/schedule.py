"""When to punch and on which ports, derived from the clock alone (pure).

This is Part 1 and Part 2 of "A most elegant TCP hole punching algorithm":
both peers quantise the current time into a *bucket*, and the bucket seeds
a PRNG that draws the candidate ports.  Nothing here touches the network,
so two users can compare plans (``punchcat --plan``) before they punch.

The numbers reproduce the article's script exactly, so a punchcat user and
a user of the original script agree on the bucket and the ports.  A named
session (``--session``) seeds the PRNG with a hash of its name and the
bucket instead, so that two sessions between the same two hosts punch on
ports of their own.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

#: Multiplier that spreads consecutive buckets over the seed space (article).
LARGE_PRIME = 2654435761
#: Seed modulus (article); it keeps the seed within what the PRNG accepts.
SEED_MODULUS = 0xFFFFFFFF
#: Candidate ports are drawn from [PORT_BASE, PORT_BASE + PORT_SPAN).
PORT_BASE = 30000
PORT_SPAN = 20000


def window(clock_error: float) -> float:
    """Length of a bucket in seconds: twice the clock error plus two."""
    return clock_error * 2 + 2


def bucket_at(now: float, clock_error: float) -> int:
    """The article's raw bucket number for the instant *now*."""
    return int((now - clock_error) // window(clock_error))


def seed(bucket: int, session: bytes = b"") -> int:
    """The PRNG's seed for *bucket*: the article's, or for a named session
    (its hello tag, :func:`punchcat.handshake.session_tag`) a hash of both."""
    if not any(session):
        return (bucket * LARGE_PRIME) % SEED_MODULUS
    digest = hashlib.sha256(b"punchcat ports\0" + session + str(bucket).encode()).digest()
    return int.from_bytes(digest[:4], "big") % SEED_MODULUS


def ports_for_bucket(bucket: int, count: int, session: bytes = b"") -> list[int]:
    """The *count* distinct candidate ports of *bucket*, in draw order."""
    if not 0 < count <= PORT_SPAN:
        raise ValueError(f"count must be in 1..{PORT_SPAN}")
    rng = random.Random(seed(bucket, session))
    ports: list[int] = []
    seen: set[int] = set()
    while len(ports) < count:
        port = PORT_BASE + rng.randint(0, PORT_SPAN - 1)
        if port not in seen:
            seen.add(port)
            ports.append(port)
    return ports


@dataclass(frozen=True)
class Plan:
    """The article's plan for one run: a bucket, its rendezvous, its ports."""

    now: float
    clock_error: float
    run_window: float
    bucket: int
    rendezvous: float
    ports: tuple[int, ...]
    session: bytes = b""

    @property
    def window(self) -> float:
        return window(self.clock_error)

    def as_dict(self) -> dict:
        active = active_ports(self.now, self.clock_error, self.run_window, len(self.ports),
                              self.session)
        return {
            "bucket": self.bucket,
            "rendezvous": self.rendezvous,
            "ports": list(self.ports),
            "now": self.now,
            "clock_error": self.clock_error,
            "run_window": self.run_window,
            "window": self.window,
            "active_buckets": sorted(set(active.values())),
            "extra_ports": [p for p in active if p not in self.ports],
        }


def plan_bucket(now: float, clock_error: float, run_window: float) -> tuple[int, float]:
    """The article's bucket and rendezvous for a run that starts at *now*.

    The rendezvous is the end of the current bucket plus the clock error; if
    that leaves less than *run_window* seconds, the script moves on to the
    next bucket (and its rendezvous one window later).
    """
    w = window(clock_error)
    bucket = bucket_at(now, clock_error)
    rendezvous = (bucket + 1) * w + clock_error
    if rendezvous - now < run_window:
        bucket += 1
        rendezvous += w
    return bucket, rendezvous


def article_plan(now: float, clock_error: float, run_window: float, count: int,
                 session: bytes = b"") -> Plan:
    """The bucket, rendezvous and ports the article's script uses at *now*."""
    bucket, rendezvous = plan_bucket(now, clock_error, run_window)
    return Plan(now, clock_error, run_window, bucket, rendezvous,
                tuple(ports_for_bucket(bucket, count, session)), session)


def active_buckets(now: float, clock_error: float, run_window: float) -> list[int]:
    """The buckets a peer whose clock is within *clock_error* of ours may use.

    A peer whose clock reads *now* + d, |d| <= E, starts with the article's
    bucket for that instant.  The article's bucket only grows with time, so
    the buckets of [now - E, now + E] are those of its two ends; as the
    interval is 2E long and a bucket 2E + 2, there are at most two.  Two
    peers whose clocks differ by up to 2E hold at least one bucket in common
    (the bucket of the midpoint between their clocks), whenever either starts.
    """
    return sorted({plan_bucket(now - clock_error, clock_error, run_window)[0],
                   plan_bucket(now + clock_error, clock_error, run_window)[0]})


def active_ports(now: float, clock_error: float, run_window: float,
                 count: int, session: bytes = b"") -> dict[int, int]:
    """The candidate ports of the active buckets, each mapped to its bucket."""
    ports: dict[int, int] = {}
    for bucket in active_buckets(now, clock_error, run_window):
        for port in ports_for_bucket(bucket, count, session):
            ports.setdefault(port, bucket)
    return ports
