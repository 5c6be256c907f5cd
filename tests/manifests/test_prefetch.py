"""When each cohort's decision is asked for ahead of a break (manifests/prefetch.py)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manifests.prefetch import prefetch_times


def _fixed(value: float):  # type: ignore[no-untyped-def]
    return lambda: value


def test_evenly_spread_over_the_window_ending_at_the_guard() -> None:
    times = prefetch_times(4, lead=60, window=20, guard=5, max_rate=None, jitter=0,
                           uniform=_fixed(0.9))
    assert times == [37.5, 42.5, 47.5, 52.5]  # shares of 5 s in [35, 55), their middles


def test_the_window_widens_for_the_rate_cap_and_narrows_to_the_lead_left() -> None:
    widened = prefetch_times(20, lead=60, window=10, guard=5, max_rate=0.5, jitter=0,
                             uniform=_fixed(0.5))
    assert widened[0] == pytest.approx(55 - 40 + 1) and widened[-1] == pytest.approx(54)
    narrowed = prefetch_times(10, lead=12, window=30, guard=2, max_rate=None, jitter=0,
                              uniform=_fixed(0.5))
    assert narrowed[0] == pytest.approx(0.5) and narrowed[-1] == pytest.approx(9.5)


def test_no_lead_left_means_now() -> None:
    assert prefetch_times(3, lead=4, window=30, guard=5, max_rate=1, jitter=1,
                          uniform=random.random) == [0.0, 0.0, 0.0]
    assert prefetch_times(2, lead=60, window=0, guard=5, max_rate=1, jitter=1,
                          uniform=random.random) == [0.0, 0.0]
    assert prefetch_times(0, lead=60, window=30, guard=5, max_rate=1, jitter=1,
                          uniform=random.random) == []


@given(count=st.integers(1, 200), lead=st.floats(6, 3600), window=st.floats(0.5, 600),
       guard=st.floats(0, 5), rate=st.one_of(st.none(), st.floats(0.1, 50)),
       jitter=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_every_time_lies_in_its_own_share_before_the_guard(
        count: int, lead: float, window: float, guard: float, rate: float | None,
        jitter: float, seed: int) -> None:
    rng = random.Random(seed)
    times = prefetch_times(count, lead=lead, window=window, guard=guard, max_rate=rate,
                           jitter=jitter, uniform=rng.random)
    end = lead - guard
    span = min(max(window, count / rate) if rate else window, end)
    share = span / count
    assert len(times) == count
    for i, t in enumerate(times):
        assert end - span + share * i - 1e-9 <= t <= end - span + share * (i + 1) + 1e-9
    assert all(0 <= t < end + 1e-9 for t in times)
    if rate and span >= count / rate - 1e-9 and jitter == 0:
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 1 / rate - 1e-6 for g in gaps)
