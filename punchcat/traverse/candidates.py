"""The article's candidate ports, following the clock.

The ports are those of the article's buckets that a peer whose clock is
within the clock error of ours may be using
(:func:`punchcat.schedule.active_ports`); they roll with the clock, so a peer
that starts minutes later still finds us.  Every technique that punches on
the article's ports takes them from here.
"""

from __future__ import annotations

import os
from typing import Callable

from .. import sockopts
from ..schedule import active_ports

#: How often the active ports are recomputed from the clock.
ROLL_INTERVAL = 1.0


class ArticlePorts:
    """The active buckets' ports, recomputed every :data:`ROLL_INTERVAL` seconds."""

    def __init__(self, clock: Callable[[], float], clock_error: float, run_window: float,
                 count: int, reporter, quiet: bool = False, session: bytes = b""):
        self.clock = clock
        self.session = session              # a named session's tag: ports of its own
        self.clock_error = clock_error
        self.run_window = run_window
        self.count = count
        self.reporter = reporter
        self.quiet = quiet                  # another technique reports the same ports
        self.buckets: list[int] = []
        self.ports: list[int] = []
        self.next_roll = 0.0

    def roll(self, now: float) -> bool:
        """Follow the clock; True when the set of ports changed."""
        if now < self.next_roll:
            return False
        self.next_roll = now + ROLL_INTERVAL
        wanted = active_ports(self.clock(), self.clock_error, self.run_window, self.count,
                              self.session)
        buckets = sorted(set(wanted.values()))
        if buckets == self.buckets:
            return False
        self.buckets = buckets
        self.ports = list(wanted)
        if not self.quiet:
            self.reporter.info(f"buckets {' '.join(map(str, buckets))}: "
                               f"ports {' '.join(map(str, sorted(self.ports)))}")
        return True


def warn_foreign_port(reporter, port: int, warned: set[int]) -> None:
    """Say, without -v, that another user holds a candidate port: someone on
    this host may be waiting to take the peer's connection.
    Once per user; the ports after the first are said with -v."""
    others = sockopts.port_owners(port) - {os.geteuid()}
    if others - warned:
        reporter.warning(
            f"candidate port {port} is held by another user here (uid "
            f"{', '.join(map(str, sorted(others)))}): another program, or someone trying to "
            f"take this connection; without a secret the peer cannot tell them from you")
        warned |= others
