"""The random-port fallback's arithmetic (no network)."""

import resource

import pytest

from punchcat.schedule import ports_for_bucket
from punchcat.traverse import birthday


def test_the_issue_s_numbers():
    # 256 live mappings, 1000 guesses without repeats: about 98 %.
    assert birthday.hit_probability(256, 1000) == pytest.approx(0.98, abs=0.01)
    assert birthday.hit_probability(256, 0) == 0
    assert birthday.hit_probability(0, 1000) == 0
    assert birthday.hit_probability(1, 64512) == pytest.approx(1.0)


def test_the_meeting_port_is_agreed_and_not_a_candidate():
    for bucket in range(1000, 1050):
        x = birthday.meeting_port(bucket, 16)
        assert x == birthday.meeting_port(bucket, 16)
        assert x not in ports_for_bucket(bucket, 16)
        assert 30000 <= x < 50000


def test_the_fd_limit_is_raised_within_the_hard_limit(monkeypatch):
    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda what, limits: calls.append(limits))
    assert birthday.raise_fd_limit(600) == 1024 and calls == []
    assert birthday.raise_fd_limit(2000) == 2000 and calls == [(2000, 4096)]
    assert birthday.raise_fd_limit(9000) == 4096 and calls[-1] == (4096, 4096)


def test_a_refused_raise_keeps_the_old_limit(monkeypatch):
    def refuse(what, limits):
        raise ValueError("not allowed")
    monkeypatch.setattr(resource, "getrlimit", lambda what: (256, 256))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert birthday.raise_fd_limit(600) == 256
