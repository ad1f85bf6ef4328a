"""Errors a user sees: each becomes one line ``punchcat: …`` and an exit status.

The docstring of each class says what it means for the user; the message
of each instance says what happened.  ``exit_code`` is the process status:
1 for a failure at run time, 2 for a usage error found before any network
activity.
"""

from __future__ import annotations


class PunchcatError(Exception):
    """Something went wrong at run time; punchcat stops with status 1."""

    exit_code = 1


class UsageError(PunchcatError):
    """The command line cannot work; nothing was sent.  Status 2."""

    exit_code = 2


class NoConnection(PunchcatError):
    """No verified connection to the peer was made before the timeout."""


class RemoteProtocolError(PunchcatError):
    """The peer speaks punchcat but broke the protocol, or cannot work with us
    (another protocol version, an incompatible mode)."""


class LocalProtocolError(PunchcatError):
    """This side tried to do something the protocol does not allow (a bug)."""


class LinkLost(PunchcatError):
    """The punched connection broke while data was moving."""


class Interrupted(PunchcatError):
    """A signal ended punchcat; status 128 + the signal number."""

    def __init__(self, signum: int, name: str):
        super().__init__(f"interrupted by {name}")
        self.exit_code = 128 + signum
