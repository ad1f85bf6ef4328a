"""The -k server's rest after failed authentication (sans-IO)."""

from punchcat.backoff import FIRST, LONGEST, Backoff


def test_each_failure_in_a_row_doubles_the_rest_up_to_five_minutes():
    b = Backoff()
    rests = [b.failed("198.51.100.10", now=1000.0) for _ in range(12)]
    assert rests[:4] == [FIRST, 2 * FIRST, 4 * FIRST, 8 * FIRST]
    assert max(rests) == LONGEST == 300.0 and rests[-1] == LONGEST


def test_a_resting_address_waits_and_the_others_do_not():
    b = Backoff()
    b.failed("198.51.100.10", now=0.0)
    b.failed("198.51.100.10", now=0.0)                  # 2 s now
    assert b.resting("198.51.100.10", 1.9) and not b.resting("198.51.100.10", 2.0)
    assert not b.resting("2001:db8::1", 1.0)
    assert b.wake(["198.51.100.10"], now=0.5) == 2.0
    assert b.wake(["198.51.100.10", "2001:db8::1"], now=0.5) == 0.5


def test_a_success_resets_the_count():
    b = Backoff()
    for _ in range(5):
        b.failed("198.51.100.10", now=0.0)
    b.succeeded("198.51.100.10")
    assert not b.resting("198.51.100.10", 0.0)
    assert b.failed("198.51.100.10", now=0.0) == FIRST
