"""``crypton_dataflow_command_state_seconds``: every order state counted once, in the
bucket of its command's age, whatever order the stamps come in (``StepCounts.add``)."""

from __future__ import annotations

import time

import pytest

from dataflows.metrics import COMMAND_STATE_BUCKETS, StepCounts


def _bucket(seconds: float) -> int:
    return next(i for i, bound in enumerate(COMMAND_STATE_BUCKETS) if seconds <= bound)


def test_each_state_is_counted_once_in_its_bucket() -> None:
    counts = StepCounts("test")
    now_ms = int(time.time() * 1000)
    # Ages in the middle of their buckets (1 ms, 175 ms, 3.7 s), so a slow test run
    # does not move them; runs of equal stamps, broken and taken up again.
    fresh, late, stale = now_ms - 1, now_ms - 175, now_ms - 3_700
    counts.add(2, 1, [fresh, fresh, late, fresh, stale, stale])
    buckets = counts.latency_buckets
    assert sum(buckets) == 6
    assert buckets[_bucket(0.001)] == 3
    assert buckets[_bucket(0.175)] == 1
    assert buckets[_bucket(3.7)] == 2
    assert counts.latency_sum == pytest.approx((3 * 0.001 + 0.175 + 2 * 3.7), abs=0.5)
    assert (counts.trades, counts.dead) == (2, 1)


def test_a_stamp_from_the_future_counts_as_no_wait() -> None:
    counts = StepCounts("test")
    counts.add(0, 0, [int(time.time() * 1000) + 60_000])  # another machine's clock ahead
    assert counts.latency_buckets[0] == 1 and counts.latency_sum == 0
