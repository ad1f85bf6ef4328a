"""punchcat-lab, the one-box demo: it reports a punch and tears everything down."""

import os
import subprocess
import sys

import pytest

LAB = [sys.executable, "-m", "punchcat.lab.cli"]


def namespaces(pid: int) -> set[str]:
    """The lab namespaces of the punchcat-lab process *pid* (named after it)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(f"pclab{pid}-")}


def demo(*args, timeout=120) -> subprocess.CompletedProcess:
    """Run punchcat-lab; returns its result with .pid set."""
    proc = subprocess.Popen([*LAB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=timeout)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return done


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
    done = demo("--delay", "0.5", "--answer-b", "reject")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: success" in done.stdout
    assert done.stdout.count("intact") == 2
    assert "winner" in done.stdout and "bucket" in done.stdout
    assert namespaces(done.pid) == set()


@pytest.mark.lab
def test_demo_with_both_hosts_behind_two_nats(make_lab):
    make_lab  # noqa: B018
    done = subprocess.run([*LAB, "--delay", "0.5", "--inner-a", "--inner-b", "--answer-a", "reject",
                           "--answer-b", "reject"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("behind a container bridge's NAT") == 2
    assert done.stdout.count("2 NATs on this side (172.17.0.1, 192.168.1.1)") == 2
    assert "sentinel TTL 3" in done.stdout and "result: success" in done.stdout


@pytest.mark.lab
def test_demo_reports_a_failure(make_lab, tmp_path):
    make_lab  # noqa: B018
    data = tmp_path / "data"
    data.write_bytes(os.urandom(10000))
    done = demo("--nat-a", "random", "--nat-b", "random", "-w", "3", "--file", str(data))
    assert done.returncode == 1
    assert "result: failure" in done.stdout and "no connection to" in done.stdout
    assert namespaces(done.pid) == set()


@pytest.mark.lab
def test_interrupt_tears_the_lab_down(make_lab):
    make_lab  # noqa: B018
    proc = subprocess.Popen([*LAB, "--delay", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert "host b starts" in proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
    assert len(namespaces(proc.pid)) == 6                  # the lab is up
    proc.send_signal(2)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "torn down" in err
    assert namespaces(proc.pid) == set()
