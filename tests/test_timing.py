"""The sentinel and probe schedule on a fake clock (no sockets, no root)."""

import random

import pytest

from punchcat.traverse.timing import (BURST, BURST_DELAY, HANDED_OVER_PAUSE, PROBE_INTERVAL,
                                      PROBE_PAUSE, PROBE_SPACING, PROBE_WINDOW, RECYCLE,
                                      SLOW_PROBE_INTERVAL, Arm, SentinelSchedule)

PORTS = list(range(30000, 30032))


def schedule(now=100.0, ports=PORTS, seed=1):
    s = SentinelSchedule(now, random.Random(seed))
    s.set_ports(ports)
    return s


def run(s, until, start=100.0):
    """Step the fake clock from wakeup to wakeup; returns [(time, Arm)]."""
    log, now = [], start
    while now <= until:
        log += [(now, a) for a in s.due(now)]
        now = max(s.wakeup(), now + 1e-6)
    return log


def probes(log):
    return [(t, a.port) for t, a in log if a.full]


def test_every_port_gets_a_sentinel_at_once():
    s = schedule()
    actions = s.due(100.0)
    assert sorted(a.port for a in actions) == PORTS
    assert not any(a.full for a in actions)


def test_the_burst_comes_just_after_the_sentinels():
    s = schedule()
    s.due(100.0)
    assert s.wakeup() == pytest.approx(100.0 + BURST_DELAY)
    assert s.due(100.0 + BURST_DELAY / 2) == []
    burst = [a for a in s.due(100.0 + BURST_DELAY) if a.full]
    assert len(burst) == BURST == len({a.port for a in burst})


def test_probes_every_half_second_in_the_window_then_slowly():
    log = run(schedule(), until=100.0 + 30)
    times = [t for t, _ in probes(log)][BURST:]           # after the burst
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:])]
    in_window = [g for t, g in zip(times, gaps) if t < 100.0 + PROBE_WINDOW - PROBE_INTERVAL]
    later = [g for t, g in zip(times, gaps) if t >= 100.0 + PROBE_WINDOW]
    assert in_window and all(g == pytest.approx(PROBE_INTERVAL, abs=1e-5) for g in in_window)
    assert later and all(g == pytest.approx(SLOW_PROBE_INTERVAL, abs=1e-5) for g in later)


def test_a_port_is_not_probed_again_too_soon():
    log = run(schedule(ports=PORTS[:10]), until=100.0 + 60)
    last: dict[int, float] = {}
    for t, port in probes(log):
        if port in last:
            assert t - last[port] >= PROBE_SPACING - 1e-9
        last[port] = t


def test_sentinels_are_replaced_before_the_kernel_retransmits():
    s = schedule(ports=[30000])
    s.due(100.0)
    s.burst_pending = False                 # sentinels only
    s.next_probe = float("inf")
    log = run(s, until=104.0, start=100.0 + 1e-6)
    times = [t for t, a in log if not a.full]
    assert times and all(b - a == pytest.approx(RECYCLE) for a, b in zip(times, times[1:]))


def test_a_refused_probe_reopens_the_port_at_once_a_failed_sentinel_does_not():
    s = schedule(ports=[30000, 30001])
    s.due(100.0)
    s.due(100.0 + BURST_DELAY)                # both probed (fewer ports than the burst)
    s.ended(30000, 100.1, refused=True)
    assert Arm(30000, False) in s.due(100.1)
    s = schedule(ports=[30000])
    s.due(100.0)
    s.ended(30000, 100.01, refused=True)      # a sentinel refused (IP_MINTTL missing)
    assert s.due(100.01) == []
    assert Arm(30000, False) in s.due(100.0 + RECYCLE)


def test_a_connection_holds_the_port_and_the_probes():
    s = schedule()
    s.due(100.0)
    s.due(100.0 + BURST_DELAY)
    s.connected(PORTS[0], 101.0)
    log = run(s, until=101.0 + HANDED_OVER_PAUSE + 1, start=101.0)
    assert not [t for t, p in probes(log) if t < 101.0 + PROBE_PAUSE]
    rearmed = [t for t, a in log if a.port == PORTS[0]]
    assert rearmed and min(rearmed) >= 101.0 + HANDED_OVER_PAUSE


def test_rolling_ports_keeps_the_order_and_returns_what_was_given_up():
    s = schedule(ports=[1, 2, 3])
    assert s.set_ports([2, 3, 4, 5]) == [1]
    assert sorted(s.order) == [2, 3, 4, 5] and s.order[:2] == [p for p in s.order if p in (2, 3)]
    s.forget(4)
    assert 4 not in s.ports and 4 not in s.order


def test_wakeup_is_exactly_when_something_is_due():
    s = schedule()
    now = 100.0
    for _ in range(200):
        s.due(now)
        wake = s.wakeup()
        assert s.due(wake - 1e-6) == []
        assert s.due(wake) != [] or wake == s.next_probe   # a probe tick may find no port
        now = wake
