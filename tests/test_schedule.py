"""The article's bucket, rendezvous and ports at known instants."""

import pytest
from hypothesis import given, strategies as st

from punchcat.schedule import article_plan, bucket_at, ports_for_bucket, window


def test_window_is_twice_the_clock_error_plus_two():
    assert window(20) == 42
    assert window(1) == 4


def test_plan_in_the_middle_of_a_bucket():
    # (1700000000 - 20) // 42 = 40476190 exactly; the rendezvous
    # (40476190 + 1) * 42 + 20 = 1700000042 is 42 s away, more than the run window.
    plan = article_plan(1700000000.0, 20, 10, 16)
    assert plan.bucket == 40476190
    assert plan.rendezvous == 1700000042
    assert plan.ports == (38491, 44519, 32990, 42377, 33639, 48206, 46408, 38323,
                          38255, 44785, 31266, 46465, 38909, 37057, 31276, 48983)


def test_plan_moves_on_when_the_rendezvous_is_too_close():
    # Raw bucket 40476190 again, but its rendezvous 1700000042 is only 8.5 s
    # away (< 10): the script moves on to the next bucket and one window later.
    plan = article_plan(1700000033.5, 20, 10, 16)
    assert bucket_at(1700000033.5, 20) == 40476190
    assert plan.bucket == 40476191
    assert plan.rendezvous == 1700000084
    assert plan.ports[:4] == (46795, 31726, 38790, 40355)
    assert plan.ports == tuple(ports_for_bucket(40476191, 16))


def test_ports_of_bucket_zero():
    # seed (0 * 2654435761) % 0xFFFFFFFF = 0
    assert ports_for_bucket(0, 16) == [42623, 43781, 31326, 38484, 46753, 45922, 43268, 39938,
                                       45617, 41732, 49116, 37157, 46537, 34563, 39235, 34579]


def test_fewer_ports_are_a_prefix_of_more():
    assert ports_for_bucket(12345, 4) == ports_for_bucket(12345, 16)[:4]


@pytest.mark.parametrize("count", [0, -1, 20001])
def test_port_count_out_of_range(count):
    with pytest.raises(ValueError):
        ports_for_bucket(1, count)


@given(bucket=st.integers(min_value=0, max_value=2**40), count=st.integers(1, 100))
def test_ports_are_distinct_and_in_range(bucket, count):
    ports = ports_for_bucket(bucket, count)
    assert len(ports) == len(set(ports)) == count
    assert all(30000 <= p <= 49999 for p in ports)


@given(now=st.floats(min_value=1e9, max_value=4e9), error=st.floats(0, 60),
       run_window=st.floats(0, 30))
def test_rendezvous_is_far_enough_and_consistent(now, error, run_window):
    plan = article_plan(now, error, run_window, 4)
    w = window(error)
    assert plan.rendezvous - now >= min(run_window, w) - 1e-6
    assert plan.rendezvous == pytest.approx((plan.bucket + 1) * w + error)
    assert plan.bucket in (bucket_at(now, error), bucket_at(now, error) + 1)
