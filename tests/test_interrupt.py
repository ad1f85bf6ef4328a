"""A signal is never lost.

Python runs a signal handler between two bytecodes of the main thread; when
that happens inside a weakref callback or ``__del__`` (the garbage collector
runs them anywhere), the handler's exception is only printed and dropped.
Seen in CI: a ``-c -k`` server ignored SIGTERM that way and kept punching.
punchcat keeps the signal and every loop raises it again.
"""

import io
import signal
import socket
import sys
import threading
import weakref

import pytest

from punchcat.channel import PlainChannel
from punchcat.errors import Interrupted, check_interrupted, on_signal, quiet_unraisable
from punchcat.forward import serve
from punchcat.relay import relay
from punchcat.status import QUIET, Reporter


@pytest.fixture(autouse=True)
def no_pending_signal():
    Interrupted.pending = None
    yield
    Interrupted.pending = None


def drop_in_a_weakref_callback(fail) -> str:
    """Call *fail* where Python drops exceptions (a weakref callback), with
    punchcat's unraisable hook; returns what reached stderr."""
    class Thing:
        pass
    old, sys.unraisablehook = sys.unraisablehook, quiet_unraisable
    stderr, sys.stderr = sys.stderr, io.StringIO()
    try:
        thing = Thing()
        ref = weakref.ref(thing, lambda _ref: fail())
        del thing                               # the callback runs here
        assert ref() is None
        return sys.stderr.getvalue()
    finally:
        sys.unraisablehook, sys.stderr = old, stderr


def test_a_signal_dropped_in_a_weakref_callback_is_raised_again():
    said = drop_in_a_weakref_callback(lambda: on_signal(signal.SIGTERM, None))
    assert said == ""                           # no "Exception ignored" traceback
    with pytest.raises(Interrupted) as caught:
        check_interrupted()
    assert caught.value.exit_code == 143


def test_other_dropped_errors_are_still_printed():
    def fail():
        raise ValueError("boom")
    assert "boom" in drop_in_a_weakref_callback(fail)
    check_interrupted()                         # and no signal is pending


def in_thread(target):
    box = {}

    def run():
        try:
            target()
        except BaseException as exc:        # noqa: BLE001 - reported to the test
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_an_idle_forwarding_loop_notices_a_dropped_signal():
    link, peer = socket.socketpair()
    t, box = in_thread(lambda: serve(PlainChannel(link), True, Reporter(QUIET)))
    t.join(0.2)
    assert t.is_alive()                     # idle: nothing to do, waiting
    Interrupted.pending = Interrupted(signal.SIGINT, "SIGINT")
    t.join(10)
    assert not t.is_alive()
    assert isinstance(box.get("error"), Interrupted)
    peer.close()


def test_an_idle_pipe_notices_a_dropped_signal():
    link, peer = socket.socketpair()
    source_r, source_w = socket.socketpair()    # stdin that stays silent
    sink_r, sink_w = socket.socketpair()
    t, box = in_thread(lambda: relay(PlainChannel(link), source_r.fileno(), sink_w.fileno(), b""))
    t.join(0.2)
    assert t.is_alive()
    Interrupted.pending = Interrupted(signal.SIGTERM, "SIGTERM")
    t.join(10)
    assert not t.is_alive()
    assert isinstance(box.get("error"), Interrupted)
    for s in (peer, source_r, source_w, sink_r, sink_w):
        s.close()
