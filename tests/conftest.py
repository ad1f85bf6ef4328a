"""Shared fixtures: the NAT lab (root only) and random payloads."""

from __future__ import annotations

import hashlib
import os

import pytest

from punchcat.lab import Lab, Side, missing_prerequisites

#: Set by .ci/run: lab tests must run there, so a missing prerequisite fails them.
REQUIRE_LAB = os.environ.get("PUNCHCAT_REQUIRE_LAB") == "1"


@pytest.fixture
def make_lab():
    """Build NAT labs; each is torn down after the test, pass or fail."""
    missing = missing_prerequisites()
    if missing:
        reason = "the NAT lab needs " + ", ".join(missing)
        if REQUIRE_LAB:
            pytest.fail(reason + " (PUNCHCAT_REQUIRE_LAB=1)")
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(a: Side = Side(), b: Side = Side(), ipv6: bool = False) -> Lab:
        lab = Lab(a, b, ipv6=ipv6)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payload():
    """Random bytes of a given size (fresh for each call)."""
    return lambda size: os.urandom(size)
