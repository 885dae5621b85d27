"""The collector's lag percentiles: exact to their 2 % buckets, reset at every stats line."""

from __future__ import annotations

import random

import pytest

from collector.counters import Counters, LagMeter


def test_percentiles_of_a_known_spread_are_within_two_percent() -> None:
    meter = LagMeter()
    lags = [float(ms) for ms in range(1, 10_001)]  # 1 ms .. 10 s, evenly
    random.Random(7).shuffle(lags)
    meter.add(lags)
    figures = meter.take()
    assert figures["lag_p50_ms"] == pytest.approx(5000, rel=0.02)
    assert figures["lag_p99_ms"] == pytest.approx(9900, rel=0.02)
    assert figures["lag_max_ms"] == 10_000


def test_a_few_slow_messages_move_the_p99_but_not_the_median() -> None:
    meter = LagMeter()
    meter.add([200.0] * 980 + [60_000.0] * 20)  # 2 % replayed after an outage
    figures = meter.take()
    assert figures["lag_p50_ms"] == pytest.approx(200, rel=0.02)
    assert figures["lag_p99_ms"] == pytest.approx(60_000, rel=0.02)


def test_each_stats_line_covers_only_the_messages_since_the_last() -> None:
    counters = Counters()
    counters.stored_with_lag([5_000.0, 5_000.0])
    first = counters.lines("c1")[0]
    assert "lag_p50_ms=" in first
    second = counters.lines("c1")[0]
    assert "lag_" not in second  # nothing stored in between: no lag figures
    counters.stored_with_lag([40.0])
    third = counters.lines("c1")[0]
    assert "lag_max_ms=40" in third
