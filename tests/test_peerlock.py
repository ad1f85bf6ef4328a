"""One run at a time toward one peer per session: the second waits, saying so."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import wait_for

HOLD = """
import sys, time
from punchcat.peerlock import PeerLock
from punchcat.status import Reporter, NORMAL
with PeerLock(sys.argv[1].split(","), sys.argv[2], Reporter(NORMAL)):
    print("holding", flush=True)
    sys.stdin.read()                      # until the test closes our stdin
"""


def hold(tmp_path, peers: str, session: str = "") -> subprocess.Popen:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    return subprocess.Popen([sys.executable, "-c", HOLD, peers, session], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_second_run_toward_the_same_peer_waits_for_the_first_and_says_so(tmp_path):
    first = hold(tmp_path, "203.0.113.20")
    assert first.stdout.readline() == "holding\n"
    second = hold(tmp_path, "203.0.113.20")
    wait_for(lambda: "waiting for it to end" in _err_so_far(second), what="the second's line")
    assert second.poll() is None                       # still waiting, not holding
    first.stdin.close()
    assert first.wait(10) == 0
    assert second.stdout.readline() == "holding\n"     # its turn now
    second.stdin.close()
    assert second.wait(10) == 0
    assert f"(pid {first.pid})" in _err_so_far(second)


def test_other_peers_and_named_sessions_run_side_by_side(tmp_path):
    runs = [hold(tmp_path, "203.0.113.20"), hold(tmp_path, "198.51.100.10"),
            hold(tmp_path, "203.0.113.20", "backup"), hold(tmp_path, "203.0.113.20", "chat")]
    try:
        for run in runs:
            assert run.stdout.readline() == "holding\n"
    finally:
        for run in runs:
            run.stdin.close()
            run.wait(10)


def test_a_lock_directory_others_can_write_is_not_used(tmp_path):
    (tmp_path / "punchcat").mkdir(mode=0o777)
    os.chmod(tmp_path / "punchcat", 0o777)
    run = hold(tmp_path, "203.0.113.20")
    assert run.stdout.readline() == "holding\n"
    run.stdin.close()
    run.wait(10)
    assert "no private directory for the session lock" in run.stderr.read()


_seen: dict[int, str] = {}


def _err_so_far(proc: subprocess.Popen) -> str:
    """stderr read so far (non-blocking: the waiting process writes one line)."""
    import select
    if select.select([proc.stderr], [], [], 0)[0]:
        _seen[proc.pid] = _seen.get(proc.pid, "") + proc.stderr.readline()
    return _seen.get(proc.pid, "")
