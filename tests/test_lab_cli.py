"""punchcat-lab, the one-box demo: it reports a punch and tears everything down."""

import os
import subprocess
import sys

import pytest

LAB = [sys.executable, "-m", "punchcat.lab.cli"]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("pclab")}


def test_missing_prerequisites_are_named():
    done = subprocess.run(LAB, capture_output=True, text=True,
                          env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 1
    assert "'ip' command" in done.stderr and "'nft' command" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_option_is_a_usage_error():
    done = subprocess.run([*LAB, "--nat-a", "sideways"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("punchcat-lab: ") and "--nat-a" in done.stderr


@pytest.mark.lab
def test_demo_succeeds_and_cleans_up(make_lab):
    make_lab  # noqa: B018 - the fixture checks the prerequisites (skip or fail)
    before = namespaces()
    done = subprocess.run([*LAB, "--delay", "0.5", "--answer-b", "reject"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: success" in done.stdout
    assert done.stdout.count("intact") == 2
    assert "winner" in done.stdout and "bucket" in done.stdout
    assert namespaces() - before == set()


@pytest.mark.lab
def test_demo_reports_a_failure(make_lab, tmp_path):
    make_lab  # noqa: B018
    before = namespaces()
    data = tmp_path / "data"
    data.write_bytes(os.urandom(10000))
    done = subprocess.run([*LAB, "--nat-a", "random", "--nat-b", "random", "-w", "3",
                           "--file", str(data)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "result: failure" in done.stdout and "no connection to" in done.stdout
    assert namespaces() - before == set()


@pytest.mark.lab
def test_interrupt_tears_the_lab_down(make_lab):
    make_lab  # noqa: B018
    before = namespaces()
    proc = subprocess.Popen([*LAB, "--delay", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert "host b starts" in proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
    proc.send_signal(2)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "torn down" in err
    assert namespaces() - before == set()
