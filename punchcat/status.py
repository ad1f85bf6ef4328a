"""What punchcat tells the user on stderr (stdout carries data only).

Three levels: ``-q`` prints errors only, the default adds a live status line
when stderr is a terminal, ``-v`` adds one line per event (bucket, ports,
connections, winner, statistics).
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2


def printable(text: str) -> str:
    """*text* safe to show on a terminal: every character that is not
    printable (C0 and C1 controls, escape, DEL, bidirectional overrides and
    other format characters, separators but the space, lone surrogates)
    becomes a visible escape such as ``\\x1b`` or ``\\u202e``, so that text
    from the peer can neither move the cursor, retitle the window, clear the
    screen nor fake a line of its own.  Idempotent: nothing it returns needs
    escaping again."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ord(ch)) for ch in text)


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class Reporter:
    def __init__(self, level: int = NORMAL, stream: TextIO | None = None):
        self.level = level
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._status_shown = False
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr went away; nothing better to do

    def _line(self, text: str) -> None:
        text = printable(text)          # whatever the message quotes, one inert line
        with self._lock:
            if self._status_shown:
                self._write("\r\x1b[K")
                self._status_shown = False
            self._write(text + "\n")

    def error(self, message: str) -> None:
        """One line ``punchcat: message``, shown at every level."""
        self._line(f"punchcat: {message}")

    def notice(self, message: str) -> None:
        """A line asked for explicitly (e.g. --stats), shown unless -q."""
        if self.level >= NORMAL:
            self._line(f"punchcat: {message}")

    def warning(self, message: str) -> None:
        """Something the user should know even without ``-v``; not with ``-q``."""
        if self.level >= NORMAL:
            self._line(f"punchcat: {message}")

    def info(self, message: str) -> None:
        """An event, shown with ``-v``."""
        if self.level >= VERBOSE:
            self._line(f"punchcat: {message}")

    def status(self, text: str) -> None:
        """Replace the live status line (terminal only, not with ``-q``)."""
        if not self.tty or self.level < NORMAL:
            return
        with self._lock:
            self._write("\r\x1b[K" + text)
            self._status_shown = True

    def clear(self) -> None:
        """Remove the live status line, if any."""
        with self._lock:
            if self._status_shown:
                self._write("\r\x1b[K")
                self._status_shown = False


def human(n: float) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 3.2 MiB, 1.0 GiB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def transfer_line(stats) -> str:
    """The --stats line for a transfer (a :class:`punchcat.relay.Stats`)."""
    rate = (stats.sent + stats.received) / max(stats.duration, 1e-6)
    return (f"sent {stats.sent} bytes, received {stats.received} bytes in "
            f"{stats.duration:.2f} s ({human(rate)}/s)")


def show_progress(reporter: Reporter, stats) -> None:
    """The live progress line (terminal stderr only), once a transfer lasts."""
    if stats.duration < 1.0:
        return
    rate = (stats.sent + stats.received) / stats.duration
    reporter.status(f"punchcat: sent {human(stats.sent)}, received {human(stats.received)}, "
                    f"{human(rate)}/s, {stats.duration:.0f} s")
