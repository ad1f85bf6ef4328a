"""Errors a user sees: each becomes one line ``punchcat: …`` and an exit status.

The docstring of each class says what it means for the user; the message
of each instance says what happened.  ``exit_code`` is the process status:
1 for a failure at run time, 2 for a usage error found before any network
activity.
"""

from __future__ import annotations

import errno
import signal
import sys


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


class AuthenticationFailed(PunchcatError):
    """The peer does not know the same secret (or is not the peer at all).

    Raised by :mod:`punchcat.srp` for any malformed, out-of-range or wrong
    message and by :mod:`punchcat.secure` when the exchange cannot finish;
    the message always starts with "authentication failed: "."""

    def __init__(self, message: str, address: str | None = None):
        super().__init__(message)
        #: The peer address (or relay) the failed link came through, once known.
        self.address = address


class LinkLost(PunchcatError):
    """The punched connection broke while data was moving."""

    def __init__(self, message: str, errno: int | None = None, doing: str = ""):
        super().__init__(message)
        #: The OS's reason (an errno), when a socket call failed: the relay
        #: picks the cause from it when both flows fail.
        self.errno = errno
        #: What the failed call was doing: "sending", "receiving", "closing".
        self.doing = doing

    @classmethod
    def from_os(cls, exc: OSError, doing: str) -> "LinkLost":
        """The one wording for a failed socket call on the link (*doing*:
        "sending", "receiving", "closing"), on every path."""
        if exc.errno == errno.ETIMEDOUT:
            message = (f"connection lost while {doing}: the peer stopped answering "
                       f"(it or the path to it is gone)")
        else:
            message = f"connection lost while {doing}: {exc.strerror or exc}"
        return cls(message, exc.errno, doing)


class Tampered(LinkLost):
    """A record failed its integrity check: something on the path changed
    the encrypted stream.  Not a broken path: the stream is not resumed."""


class PeerStopped(PunchcatError):
    """The peer ended the stream early for a reason of its own (interrupted,
    its output failed): no new link will continue it."""


class InputFailed(PunchcatError):
    """What punchcat sends (standard input, or a local connection) could not be read."""

    @classmethod
    def from_os(cls, exc: OSError) -> "InputFailed":
        return cls(f"cannot read input: {exc.strerror or exc}")


class OutputFailed(PunchcatError):
    """What the peer sent could not be written (standard output, or a local connection)."""

    @classmethod
    def from_os(cls, exc: OSError) -> "OutputFailed":
        return cls(f"cannot write output: {exc.strerror or exc}")


class Interrupted(PunchcatError):
    """A signal ended punchcat; status 128 + the signal number."""

    #: The signal received, kept for :func:`check_interrupted`.
    pending: "Interrupted | None" = None

    def __init__(self, signum: int, name: str):
        super().__init__(f"interrupted by {name}")
        self.exit_code = 128 + signum


def catch_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP end the program by :class:`Interrupted`
    (ssh ends a ProxyCommand with SIGHUP: the peer must hear of it, or it
    would wait for the link to come back)."""
    sys.unraisablehook = quiet_unraisable
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_signal)


def on_signal(signum: int, _frame) -> None:
    """Signal handler: end punchcat by raising :class:`Interrupted`.

    Python runs the handler between any two bytecodes of the main thread; if
    that happens inside a weakref callback or a ``__del__`` (the garbage
    collector runs them anywhere), the exception is printed and dropped.  So
    the signal is also kept, and every loop calls :func:`check_interrupted`
    at least once a second.
    """
    Interrupted.pending = Interrupted(signum, signal.Signals(signum).name)
    raise Interrupted.pending


def check_interrupted() -> None:
    """Raise the signal that arrived, should its first raise have been lost."""
    if Interrupted.pending is not None:
        raise Interrupted.pending


def quiet_unraisable(unraisable) -> None:
    """sys.unraisablehook: a lost Interrupted is not a traceback on stderr
    (:func:`check_interrupted` raises it again); anything else is printed."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)
