"""The stream outlives its link: punch again when the path breaks, and leave a relay for a direct path.

Theory of operation
-------------------
A *flow* (pipe mode's :class:`punchcat.relay.PipeStream`, or the forwarder of
``-L``/``-c``) keeps everything that must survive a link: the positions of
both directions, the bytes not yet confirmed, the local ends.  It moves data
over one link at a time (``run_link``) and returns when the stream is done,
or raises :class:`~punchcat.errors.LinkLost` when the link breaks.
:class:`DurableLink` then punches again toward the same peer, with every
technique and the relays, for up to ``--resume-timeout`` seconds: the new
link's hello names the stream (:func:`punchcat.resume.stream_id`), both
sides prove they hold its resume key, each says in its first record (RESUME)
how much it has received, and the flow sends again from what the other named.
Both sides notice a break within about ``--keepalive`` seconds (TCP
keepalive and user timeout; a reset at once), and the one that notices first
simply punches first: the punch is built for a peer that starts later.

A link that goes through a relay is replaced by a direct one when one can be
made: in the background, a punch without the relays is tried at once and
again after :data:`UPGRADE_TRIES` seconds (the relay carries the data
meanwhile); once a direct link is agreed and proven, the flow lets go of the
relayed one (``interrupt``), and the stream resumes on the direct link
exactly as after a break, then the relayed connection is closed.

A record that fails its integrity check is no broken path but a changed
stream (:class:`~punchcat.errors.Tampered`): the run ends, and the peer is
told if the link still carries that.

Both sides must want this (the hello's FLAG_RESUME; ``--resume-timeout 0``
turns it off), and the first link must have given the stream its key: with
a secret from SRP, without one from the KEY records both sides send first.
When the path does not come back in time, the run ends with status 1 and a
line that says how long it tried and how much was delivered; what reached
the output is an exact prefix of what the peer sent.
"""

from __future__ import annotations

import os
import threading
import time

from . import resume, stream
from .connect import Connected, connect
from .errors import LinkLost, NoConnection, PunchcatError, Tampered
from .status import QUIET, Reporter

#: Seconds after a relayed link came up at which a direct punch is tried in
#: the background (each try lasts :data:`UPGRADE_TRY`): the first at once,
#: then spaced, then every :data:`UPGRADE_EVERY` seconds.
UPGRADE_TRIES = (0.0, 0.0, 30.0, 90.0, 210.0)
UPGRADE_EVERY = 300.0
#: How long one background try punches.
UPGRADE_TRY = 12.0
#: How long a side that found a changed record waits for the peer to read
#: its alert and close (the peer stops at once when it reads it).
LAST_WORD = 2.0
#: The paths a stream took that --stats names (the last ones: a link whose
#: path keeps breaking must not grow the list without end).
PATHS_KEPT = 4
#: Background tries with the random-port fallback (a burst of SYNs that looks
#: like a port scan): the first ones only.
UPGRADE_GUESSING = 2


class StreamReplaced(LinkLost):
    """While this side tried to resume the stream, the peer started afresh
    (a new process: the old one is gone); a ``-k`` server takes the new link."""

    def __init__(self, message: str, connected: Connected):
        super().__init__(message)
        self.connected = connected


class DurableLink:
    """Runs a flow over one link after another (module docstring)."""

    def __init__(self, opts, peers, routes, reporter: Reporter, first: Connected, flow,
                 progress=None):
        self.opts, self.peers, self.routes, self.reporter = opts, peers, routes, reporter
        self.flow = flow
        self.progress = progress
        self.current = first
        self.material = os.urandom(resume.MATERIAL_LEN)   # our KEY (links without a secret)
        self.key: bytes | None = None
        self._upgrader: threading.Thread | None = None
        self._upgrade_stop = threading.Event()
        self._upgraded: Connected | None = None
        self.paths = [first.path]                 # the paths the stream took, in order

    def run(self) -> None:
        """Until the stream is done; raises when it cannot go on."""
        done = self.current
        resuming = False
        opening = [] if self.opts.secret else [stream.record(stream.KEY, self.material)]
        try:
            while True:
                self._watch_for_direct(done)
                try:
                    finished = self.flow.run_link(done.channel, done.leftover, opening,
                                                  resuming, self.progress)
                except LinkLost as exc:
                    self._stop_upgrader()
                    if isinstance(exc, Tampered):       # the peer should not resume either
                        self.flow.abort(done.channel, str(exc))
                        done.channel.close_after_last_word(LAST_WORD)
                    done.channel.close()
                    if done.link.via:
                        exc = LinkLost(f"the relay {done.link.via} closed the link ({exc})",
                                       exc.errno, exc.doing)
                    if (isinstance(exc, Tampered) or not done.resumable
                            or self.opts.resume_timeout <= 0):
                        raise exc from None
                    # The peer may have moved to the direct link first: its
                    # close of the relayed one is then what broke ours.
                    done = self._moved(done) if self._upgraded else self._again(exc)
                else:
                    self._stop_upgrader()
                    if finished:
                        done.channel.close()
                        if self._upgraded is not None:          # came too late
                            self._upgraded.channel.close()
                        return
                    done = self._moved(done)
                self._upgraded = None
                if done.path != self.paths[-1]:
                    self.paths = [*self.paths, done.path][-PATHS_KEPT:]
                self.current = done
                opening = [stream.position_record(stream.RESUME, self.flow.offsets.received)]
                resuming = True
        except PunchcatError as exc:
            if not isinstance(exc, LinkLost):
                self.flow.abort(done.channel, str(exc))
            raise
        finally:
            self._stop_upgrader()

    @property
    def path(self) -> str:
        """The ways the stream went, for the user: "direct", "relayed via
        HOST:PORT", or "relayed via HOST:PORT, then direct"."""
        return ", then ".join(self.paths)

    def _moved(self, relayed: Connected) -> Connected:
        """The stream leaves *relayed* for the direct link the upgrader made."""
        relayed.channel.close()
        self.reporter.info(f"moved the stream from the relay {relayed.link.via} to a direct link")
        return self._upgraded

    # -- after a break ---------------------------------------------------------------
    def _resume_key(self, done: Connected) -> bytes:
        if self.key is None:
            if self.opts.secret:
                self.key = done.channel.resume_key
            else:
                peer = self.flow.peer_key
                if peer is None:
                    raise LinkLost("the link broke before the stream had its key; it cannot "
                                   "be resumed")
                link = done.link
                mine, theirs = (self.material, peer) if link.leader else (peer, self.material)
                hellos = (link.local.encode() + link.peer.encode() if link.leader
                          else link.peer.encode() + link.local.encode())
                self.key = resume.key_from_plain(mine, theirs, hellos)
        return self.key

    def _again(self, lost: LinkLost) -> Connected:
        """Punch again until a link continues the stream, or the timeout."""
        key = self._resume_key(self.current)
        timeout = self.opts.resume_timeout
        off = self.flow.offsets
        self.reporter.warning(f"{lost}; punching again for up to {timeout:g} s "
                              f"(--resume-timeout)")
        started = time.monotonic()
        try:
            done = connect(self.opts, self.peers, self.routes, self.reporter,
                           started + timeout, resume_key=key)
        except NoConnection:
            raise LinkLost(f"{lost}, and no new link within {timeout:g} s: "
                           f"{max(off.received - (1 if off.peer_eof is not None else 0), 0)} "
                           f"bytes received, {min(off.acked, off.sent)} sent and confirmed"
                           ) from None
        if done.fresh:
            raise StreamReplaced(f"{lost}; the peer started afresh, so this stream is given "
                                 f"up", done)
        self.reporter.warning(f"resumed on a new link ({done.path}) after "
                              f"{time.monotonic() - started:.1f} s")
        return done

    # -- from a relay to a direct link ---------------------------------------------
    def _watch_for_direct(self, done: Connected) -> None:
        if not done.link.via or not done.resumable or self._upgrader is not None:
            return
        key = self._resume_key(done) if self.opts.secret else None
        self._upgrade_stop.clear()
        self._upgrader = threading.Thread(target=self._upgrade, args=(key,),
                                          name="punchcat-upgrade", daemon=True)
        self._upgrader.start()

    def _upgrade(self, key: bytes | None) -> None:
        began = time.monotonic()
        quiet = Reporter(QUIET, self.reporter.stream)
        for n in range(1_000_000):
            at = UPGRADE_TRIES[n] if n < len(UPGRADE_TRIES) else \
                UPGRADE_TRIES[-1] + UPGRADE_EVERY * (n - len(UPGRADE_TRIES) + 1)
            if self._upgrade_stop.wait(max(0.0, began + at - time.monotonic())):
                return
            if key is None:                  # a plain link's key needs the peer's KEY first
                try:
                    key = self._resume_key(self.current)
                except LinkLost:
                    continue
            try:
                done = connect(self.opts, self.peers, self.routes, quiet,
                               time.monotonic() + UPGRADE_TRY, resume_key=key, relays=False,
                               port_guessing=n < UPGRADE_GUESSING,
                               cancelled=self._upgrade_stop.is_set)
            except PunchcatError:
                continue
            # Handed over even when called off meanwhile: the relayed link may
            # have broken because the peer already moved to this one.
            self._upgraded = done
            if not self._upgrade_stop.is_set():
                self.reporter.info(f"a direct link to {done.address} is ready; leaving the "
                                   f"relay")
                self.flow.interrupt()
            return

    def _stop_upgrader(self) -> None:
        thread, self._upgrader = self._upgrader, None
        if thread is not None:
            self._upgrade_stop.set()
            thread.join()
