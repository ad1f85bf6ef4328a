"""How long a ``-k`` server rests after a peer failed to prove the secret (sans-IO).

SRP makes every guess of the secret an online one, but an unattended ``-k``
server answers guesses as fast as it punches: measured, four wrong clients
in a row each failed in 0.3-1.1 s and the server punched again at once.  So
each failure from one peer address doubles the time before the server
punches toward that address again, from :data:`FIRST` to :data:`LONGEST`;
a success resets it.  At the longest that is 288 guesses a day, against a
secret of at least 40 bits (:data:`punchcat.secret.FLOOR_BITS`).  A right
peer is served again once the current wait is over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The first rest after a failure, seconds.
FIRST = 1.0
#: The longest rest (five minutes).
LONGEST = 300.0


@dataclass
class Backoff:
    """Failures in a row and the end of the rest, per peer address."""

    failures: dict[str, int] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)

    def failed(self, address: str, now: float) -> float:
        """Authentication failed from *address*: returns the rest (seconds)."""
        n = self.failures[address] = self.failures.get(address, 0) + 1
        rest = min(FIRST * 2 ** (n - 1), LONGEST)
        self.until[address] = now + rest
        return rest

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)
        self.until.pop(address, None)

    def resting(self, address: str, now: float) -> bool:
        return self.until.get(address, 0.0) > now

    def wake(self, addresses: list[str], now: float) -> float:
        """When the first of *addresses* may be punched again (now if one may)."""
        return min(max(self.until.get(a, now), now) for a in addresses)
