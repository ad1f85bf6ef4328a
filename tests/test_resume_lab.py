"""The stream outlives its path: real punchcat processes across real NAT
routers that reboot, go dark or come back with other ports (root; see
conftest).  Each transfer is slowed down (a rate-limited sender) so that the
outage falls in its middle."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from punchcat.lab import PUNCHCAT, Side, run_pair

from conftest import lab_or_skip, wait_for
from test_forwarding import SSHD_PORT, ssh_lab  # noqa: F401 - a fixture

pytestmark = pytest.mark.lab

#: A sender that writes FILE to stdout at RATE MiB/s, then ends.
SLOWCAT = r"""
import os, sys, time
path, rate = sys.argv[1], float(sys.argv[2]) * (1 << 20)
start, sent = time.monotonic(), 0
with open(path, "rb") as f:
    while block := f.read(1 << 18):
        try:
            os.write(1, block)
        except BrokenPipeError:
            sys.exit(0)                   # punchcat ended: said on its own stderr
        sent += len(block)
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)             # the rate is the experiment's parameter
"""


def slow_sender(path, rate: float) -> list[str]:
    """run_pair's wrap: punchcat's stdin is SLOWCAT's output."""
    return ["sh", "-c", f'{sys.executable} -c "$SLOWCAT" {path} {rate:g} | "$0" "$@"']


def digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def data_file(tmp_path):
    def make(mib: int):
        path = tmp_path / "in"
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        return path
    return make


def transfer(lab, path, tmp_path, rate: float, outage, args=(), timeout=200, env=None):
    """a sends *path* to b at *rate* MiB/s; *outage(lab)* runs once b has
    received a quarter of it.  Returns the two runs."""
    out = tmp_path / "out"
    size = os.path.getsize(path)

    def watch():
        wait_for(lambda: out.exists() and out.stat().st_size > size // 4, timeout=120,
                 what="a quarter of the data")
        outage(lab)
    threading.Thread(target=watch, daemon=True).start()
    envs = {s: {"SLOWCAT": SLOWCAT, **(env or {})} for s in "ab"}
    return run_pair(lab, ["-v", "-w", "60", *args], stdin={"a": b"", "b": b""},
                    stdout={"b": str(out)}, env=envs, timeout=timeout,
                    wrap={"a": slow_sender(path, rate)})


def resumed(run) -> bool:
    return "punching again" in run.stderr and "resumed on a new link" in run.stderr


def test_both_routers_reboot_mid_transfer_and_the_stream_goes_on(make_lab, data_file, tmp_path):
    lab = make_lab()
    path = data_file(64)
    runs = transfer(lab, path, tmp_path, 16,
                    lambda lab: (lab.reboot_router("a"), lab.reboot_router("b")))
    for side in "ab":
        assert runs[side].returncode == 0, runs[side].stderr[-2000:]
        assert resumed(runs[side]), runs[side].stderr[-2000:]
    assert digest(tmp_path / "out") == digest(path)


def test_a_20_s_blackhole_on_one_side_is_resumed(make_lab, data_file, tmp_path):
    lab = make_lab()
    path = data_file(32)
    runs = transfer(lab, path, tmp_path, 8, lambda lab: lab.blackhole("a", 20.0))
    for side in "ab":
        assert runs[side].returncode == 0, runs[side].stderr[-2000:]
    assert any(resumed(runs[s]) for s in "ab")
    assert digest(tmp_path / "out") == digest(path)


def test_a_router_back_with_other_public_ports_is_resumed(make_lab, data_file, tmp_path):
    """After the outage a's NAT gives random ports: the resumed punch needs
    the random-port fallback, and gets there."""
    lab = make_lab()
    path = data_file(32)
    runs = transfer(lab, path, tmp_path, 8, lambda lab: lab.remap("a"))
    for side in "ab":
        assert runs[side].returncode == 0, runs[side].stderr[-2000:]
        assert resumed(runs[side]), runs[side].stderr[-2000:]
    assert digest(tmp_path / "out") == digest(path)


def test_a_path_gone_for_good_ends_both_within_the_timeouts_with_an_exact_prefix(
        make_lab, data_file, tmp_path):
    lab = make_lab()
    path = data_file(64)
    cut = {}

    def outage(lab):
        cut["at"] = time.monotonic()
        lab.cut_path()
    runs = transfer(lab, path, tmp_path, 8, outage, args=["--resume-timeout", "15"])
    for side in "ab":
        run = runs[side]
        assert run.returncode == 1, run.stderr[-2000:]
        last = [line for line in run.stderr.splitlines() if line.startswith("punchcat: ")][-1]
        assert "no new link within 15 s" in last and "bytes received" in last, last
        assert run.ended - cut["at"] < 40, run.stderr[-1000:]   # ~15 s to notice, 15 s punching
    got = (tmp_path / "out").read_bytes()
    with open(path, "rb") as f:
        assert f.read(len(got)) == got and 0 < len(got) < os.path.getsize(path)


def open_direct(lab):
    lab.sh("c1", "nft delete table inet direct")


def went_direct(runs, path, tmp_path, said: str) -> None:
    """Both sides began through the relay, went on directly (each said
    *said*) and the output is intact."""
    for side in "ab":
        run = runs[side]
        assert run.returncode == 0, run.stderr[-2000:]
        assert "connected through the relay" in run.stderr
        assert said in run.stderr, run.stderr[-2000:]
        stats = [line for line in run.stderr.splitlines() if line.startswith("punchcat: sent ")]
        assert stats and stats[-1].endswith(", then direct"), stats     # --stats (-v)
    assert digest(tmp_path / "out") == digest(path)


def test_a_killed_relay_gives_way_to_the_direct_path(make_lab, data_file, tmp_path):
    """The link goes through the relay while the direct path is blocked;
    then the path opens and the relay dies: the stream goes on, directly."""
    lab_or_skip("twist3")
    lab = make_lab()
    relay = lab.start_relay()
    lab.nft("c1", BLOCK_DIRECT)                     # only the relay gets through
    path = data_file(32)

    def outage(lab):
        open_direct(lab)
        relay.kill()
    runs = transfer(lab, path, tmp_path, 8, outage, args=["--relay", relay.endpoint],
                    env={"PUNCHCAT_SECRET": "the killed relay's secret"})
    went_direct(runs, path, tmp_path, "resumed on a new link (direct)")


def test_a_relayed_link_moves_to_the_direct_path_once_there_is_one(make_lab, data_file,
                                                                   tmp_path):
    lab_or_skip("twist3")
    lab = make_lab()
    relay = lab.start_relay()
    lab.nft("c1", BLOCK_DIRECT)
    path = data_file(120)
    # 120 s at 1 MiB/s: the path opens about 30 s in, and the move must come
    # before the data ends.  The background tries start at 0 s, when the one
    # before ends (12 s at most), at 30 s and at 90 s: the one at 30 s meets
    # the opening path, or on a loaded machine the one at 90 s does.
    runs = transfer(lab, path, tmp_path, 1, open_direct,
                    args=["--relay", relay.endpoint],
                    env={"PUNCHCAT_SECRET": "the upgrade test's secret"})
    went_direct(runs, path, tmp_path, "moved the stream from the relay")
    carried = relay.carried()
    assert 0 < carried < os.path.getsize(path)      # the relay carried the start only


def test_an_ssh_session_through_l_outlives_a_20_s_outage(ssh_lab, tmp_path):
    """A command started over ssh before the outage completes after it."""
    lab = ssh_lab
    server = lab.popen("b", [*PUNCHCAT, "-v", "-c", str(SSHD_PORT), lab.peer_of("b")],
                       stdin=subprocess.DEVNULL, stderr=open(tmp_path / "s.log", "w"))
    client = lab.popen("a", [*PUNCHCAT, "-v", "-L", "8022", lab.peer_of("a")],
                       stdin=subprocess.DEVNULL, stderr=open(tmp_path / "c.log", "w"))
    wait_for(lambda: "connected" in (tmp_path / "c.log").read_text(), what="the link")
    ssh = subprocess.Popen(
        lab.command("a", ["ssh", *lab.ssh_options, "-p", "8022", "root@127.0.0.1",
                          "echo started; read line; echo after the outage: $line"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert ssh.stdout.readline() == "started\n"
    lab.blackhole("a", 20.0)
    wait_for(lambda: "resumed on a new link" in (tmp_path / "c.log").read_text(), timeout=90,
             what="the link to come back")
    out, _ = ssh.communicate("still here\n", timeout=60)
    assert ssh.returncode == 0 and out == "after the outage: still here\n"
    client.terminate()
    assert client.wait(timeout=10) == 143
    server.terminate()
    server.wait(timeout=10)


#: On core router c1: nothing but the relay's traffic between the homes.
BLOCK_DIRECT = """
table inet direct {
    chain forward {
        type filter hook forward priority -10; policy accept;
        ip daddr 192.0.2.1 accept
        ip saddr 192.0.2.1 accept
        meta l4proto tcp drop
    }
}
"""
