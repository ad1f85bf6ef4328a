"""The portable code paths, run on Linux: PUNCHCAT_PORTABLE=1 switches off
splice, sendfile, IP_MINTTL and hop discovery (IP_RECVERR), so the fallbacks that other systems take are
not dead code here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from punchcat.lab import Side, run_pair

from conftest import sha

ROOT = Path(__file__).resolve().parent.parent
PORTABLE = {**os.environ, "PUNCHCAT_PORTABLE": "1"}


def test_portable_mode_switches_the_linux_paths_off():
    probe = ("from punchcat import channel, sockopts; from punchcat.traverse import hops; "
             "print(channel.HAVE_SPLICE, channel.HAVE_SENDFILE, sockopts.IP_MINTTL, "
             "sockopts.IPV6_MINHOPCOUNT, hops.AVAILABLE)")
    out = subprocess.run([sys.executable, "-c", probe], env=PORTABLE, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False", "None", "None", "False"]


def test_the_relay_tests_pass_on_the_portable_paths():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_relay.py", "tests/test_secure.py"],
                          cwd=ROOT, env=PORTABLE, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


@pytest.mark.lab
@pytest.mark.parametrize("answer", ["drop", "reject"])
def test_a_punch_and_a_transfer_without_ip_minttl_splice_or_sendfile(make_lab, payload,
                                                                     tmp_path, answer):
    lab = make_lab(Side(answer=answer), Side(answer=answer))
    for side in "ab":
        lab.ignore_time_exceeded(side)
    sent = {"a": payload(3_000_000), "b": payload(2_000_000)}
    (tmp_path / "in-a").write_bytes(sent["a"])          # a regular file: sendfile's case
    runs = run_pair(lab, ["-w", "30", "-v"], stdin={"a": str(tmp_path / "in-a"), "b": sent["b"]},
                    env={s: {"PUNCHCAT_PORTABLE": "1"} for s in "ab"}, delay_b=0.5)
    for side, other in (("a", "b"), ("b", "a")):
        assert runs[side].returncode == 0, runs[side].stderr
        assert sha(runs[side].stdout) == sha(sent[other])
