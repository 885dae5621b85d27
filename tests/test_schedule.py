"""When speed tests are due: windows in local time, start-up, retries, a fleet spread out."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta, timezone

import pytest

from agent.schedule import SpeedSchedule, Window
from agent.settings import parse_timezone

KZ = timezone(timedelta(hours=5))
WINDOWS = [Window.parse(w) for w in ("08:00-12:00", "12:00-16:00", "16:00-20:00")]


def _local(moment: datetime) -> datetime:
    return moment.astimezone(KZ)


def _window_of(moment: datetime) -> Window | None:
    clock = _local(moment).time()
    return next((w for w in WINDOWS if w.start <= clock < w.end), None)


def test_one_test_shortly_after_start_then_one_in_each_window_every_day() -> None:
    schedule = SpeedSchedule(WINDOWS, KZ, random.Random(7))
    start = datetime(2026, 11, 2, 6, 0, tzinfo=KZ)
    due = schedule.start(start)
    assert timedelta(minutes=1) <= due - start <= timedelta(minutes=10)
    tests = []
    for _ in range(9):
        due = schedule.after_test(due, succeeded=True)
        tests.append(due)
    days = [_local(t).date() for t in tests]
    assert days == [start.date() + timedelta(days=d) for d in (0, 0, 0, 1, 1, 1, 2, 2, 2)]
    assert [_window_of(t) for t in tests] == WINDOWS * 3


def test_a_start_up_test_inside_a_window_serves_that_window() -> None:
    schedule = SpeedSchedule(WINDOWS, KZ, random.Random(1))
    start = datetime(2026, 11, 2, 9, 0, tzinfo=KZ)
    first = schedule.start(start)
    assert _window_of(first) == WINDOWS[0]
    assert _window_of(schedule.after_test(first, succeeded=True)) == WINDOWS[1]


def test_a_failed_test_is_retried_three_times_fifteen_minutes_apart() -> None:
    schedule = SpeedSchedule(WINDOWS, KZ, random.Random(3))
    failed_at = datetime(2026, 11, 2, 9, 30, tzinfo=KZ)
    retries = []
    moment = failed_at
    for _ in range(3):
        moment = schedule.after_test(moment, succeeded=False)
        retries.append(moment)
    assert [r - failed_at for r in retries] == [timedelta(minutes=15 * n) for n in (1, 2, 3)]
    after_giving_up = schedule.after_test(moment, succeeded=False)
    assert _window_of(after_giving_up) is not None
    assert after_giving_up - moment > timedelta(minutes=15), "three retries, then the schedule"


def test_retries_start_over_after_a_success() -> None:
    schedule = SpeedSchedule(WINDOWS, KZ, random.Random(3))
    moment = datetime(2026, 11, 2, 9, 30, tzinfo=KZ)
    moment = schedule.after_test(moment, succeeded=False)
    moment = schedule.after_test(moment, succeeded=True)
    assert schedule.after_test(moment, succeeded=False) - moment == timedelta(minutes=15)


def test_a_fleet_spreads_its_tests_over_the_whole_window() -> None:
    start = datetime(2026, 11, 2, 6, 0, tzinfo=KZ)
    moments = []
    for seed in range(400):
        schedule = SpeedSchedule(WINDOWS, KZ, random.Random(seed))
        moments.append(schedule.after_test(schedule.start(start), succeeded=True))
    hours = [_local(m).hour for m in moments]
    assert set(hours) == {8, 9, 10, 11}
    for hour in (8, 9, 10, 11):
        assert 60 <= hours.count(hour) <= 140, "about a quarter of the fleet in each hour"
    assert len({m.replace(microsecond=0) for m in moments}) > 390, "never two at one moment"


def test_windows_are_local_time() -> None:
    schedule = SpeedSchedule([Window.parse("08:00-12:00")], KZ, random.Random(5))
    due = schedule.next_slot(datetime(2026, 11, 2, 0, 0, tzinfo=UTC))  # 05:00 in UTC+5
    assert time(8) <= _local(due).time() < time(12)
    assert time(3) <= due.astimezone(UTC).time() < time(7)


@pytest.mark.parametrize(
    ("text", "offset"),
    [("+05:00", 5), ("UTC+5", 5), ("-03:30", -3.5), ("UTC", 0), ("Asia/Almaty", None)],
)
def test_time_zones_parse(text: str, offset: float | None) -> None:
    zone = parse_timezone(text)
    if offset is not None:
        assert zone.utcoffset(None) == timedelta(hours=offset)


@pytest.mark.parametrize("text", ["12:00-08:00", "8-", "noon-13", "25:00-26:00"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        Window.parse(text)
