"""Ways of getting a TCP connection through both NATs: the punch techniques.

A *technique* produces established TCP connections to the peer; it never
sends a byte on them.  :func:`punchcat.agree.agree` runs every technique of a
session in one selector loop, greets each connection a technique hands over,
and elects one (:mod:`punchcat.handshake`).  The interface, :class:`Technique`,
is all the loop knows of a technique:

* ``start(sel, now)``: open its sockets, registering each in *sel* with a
  :class:`Registration` as the key's data;
* ``wakeup()``: the ``time.monotonic()`` instant it next needs ``tick``;
* ``tick(now)``: do what is due (recycle sockets, send probes);
* ``ready(tag, sock, now)``: one of its sockets has an event; returns the
  socket if its connection completed (the technique forgets it then: it is
  the loop's), else None;
* ``pause(now)``: some connection completed (maybe another technique's):
  hold back anything that would disturb the peer's router now;
* ``status()``: a few words for the status line ("32 ports");
* ``finish(leader)``: a connection won the election; hand over what must be
  tidied while both sides still run (a :class:`~punchcat.traverse.tidy.Tidy`,
  run in the background), or None;
* ``close()``: close every socket it still holds;
* ``via`` (optional attribute): the relay its connections go through, for
  the user ("HOST:PORT"); techniques without it connect directly.

What each technique observed goes into one shared
:class:`~punchcat.traverse.diagnosis.Observations`, from which the failure
line is written.  The techniques, one module each: :mod:`.sentinel` (the
article's ports, held open by sentinels and tried by probes), :mod:`.direct`
(a peer so near that no sentinel fits: plain simultaneous open),
:mod:`.birthday` (the random-port fallback), :mod:`.mapped` (the home
router opens the candidate ports) and :mod:`.transit` (through a relay the
user names, when no direct path exists); :mod:`punchcat.connect` picks which
run.
"""

from __future__ import annotations

import selectors
import socket
from typing import Any, NamedTuple, Protocol


class Registration(NamedTuple):
    """The data of a technique's socket in the shared selector."""

    technique: "Technique"
    tag: Any


class Technique(Protocol):
    def start(self, sel: selectors.BaseSelector, now: float) -> None: ...

    def wakeup(self) -> float: ...

    def tick(self, now: float) -> None: ...

    def ready(self, tag: Any, sock: socket.socket, now: float) -> socket.socket | None: ...

    def pause(self, now: float) -> None: ...

    def status(self) -> str: ...

    def finish(self, leader: bool) -> Any: ...

    def close(self) -> None: ...
