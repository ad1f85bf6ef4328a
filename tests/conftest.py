"""Shared fixtures: the NAT lab (root only) and random payloads."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from punchcat.lab import Lab, LanLab, Side, missing_prerequisites
from punchcat.lab.netns import PACKAGES as LAB_PACKAGES, which

#: Set by .ci/run: lab tests must run there, so a missing prerequisite fails them.
REQUIRE_LAB = os.environ.get("PUNCHCAT_REQUIRE_LAB") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test for *reason*; fail it instead where the lab must run."""
    if REQUIRE_LAB:
        pytest.fail(reason + " (PUNCHCAT_REQUIRE_LAB=1)")
    pytest.skip(reason)


def lab_or_skip(*tools: str, lab: str = "the NAT lab") -> None:
    """Skip (fail under CI) unless this machine can build *lab* and run the
    commands *tools* in it (e.g. ``"miniupnpd"`` for the router lab)."""
    missing = missing_prerequisites(*tools)
    if missing:
        skip_or_fail(f"{lab} needs " + ", ".join(missing))


@pytest.fixture
def make_lab():
    """Build NAT labs; each is torn down after the test, pass or fail."""
    lab_or_skip()
    labs: list[Lab] = []

    def make(a: Side = Side(), b: Side = Side(), ipv6: bool = False) -> Lab:
        lab = Lab(a, b, ipv6=ipv6)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.close()


@pytest.fixture
def make_lan():
    """Build two hosts near each other (punchcat.lab.lan); torn down after the test."""
    lab_or_skip()
    labs: list[LanLab] = []

    def make(kind: str = "link", hairpin: bool = False) -> LanLab:
        lab = LanLab(kind, hairpin)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.close()


#: The Debian package of each tool the lab tests use, the lab's own among them.
PACKAGES = {**LAB_PACKAGES, "sshd": "openssh-server", "ssh": "openssh-client",
            "scp": "openssh-client", "ssh-keygen": "openssh-client", "tcpdump": "tcpdump",
            "faketime": "faketime", "conntrack": "conntrack", "/usr/bin/time": "time",
            "prlimit": "util-linux"}


def need(*tools: str) -> None:
    """Skip (fail under CI) unless every one of *tools* is installed."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        packages = sorted({PACKAGES.get(t, t) for t in missing})
        skip_or_fail(f"needs {', '.join(missing)} (apt-get install {' '.join(packages)})")


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll *condition* until it holds; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payload():
    """Random bytes of a given size (fresh for each call)."""
    return lambda size: os.urandom(size)
