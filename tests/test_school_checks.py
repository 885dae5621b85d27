"""Each school's checks in school hours over the window, read a day at a time and kept.

Points go into a real InfluxDB; the sums are compared with what the test wrote.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from collector.influx.v1 import V1Writer
from collector.line_protocol import encode
from collector.school_checks import SETTLE_S, SchoolChecks
from collector.settings import InfluxSettings
from tests.support.services import Influx

NS = 1_000_000_000
NOW = datetime(2026, 11, 30, 15, 20, 7, tzinfo=UTC)


def _write(database: Influx, points: list[tuple[str, datetime, int, int]]) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    writer.write([
        encode("connectivity", {"school_id": school},
               {"school_passed": passed, "school_checks": checks, "checks": 60},
               int(at.timestamp() * NS))
        for school, at, passed, checks in points
    ])  # fmt: skip
    writer.close()


def _truth(
    points: list[tuple[str, datetime, int, int]], at: datetime, days: float
) -> dict[str, tuple[float, float]]:
    since = at - timedelta(days=days)
    found: dict[str, tuple[float, float]] = {}
    for school, when, passed, checks in points:
        if since < when <= at:
            before = found.get(school, (0.0, 0.0))
            found[school] = (before[0] + passed, before[1] + checks)
    return {school: sums for school, sums in found.items() if sums[1]}


def _fleet(rng: random.Random) -> list[tuple[str, datetime, int, int]]:
    """Five schools, 35 days of hourly points (some missing), school hours only counted."""
    start = NOW.replace(minute=0, second=0) - timedelta(days=35)
    points = []
    for school in ("KZ-1", "KZ-2", "KZ-3", "KZ-4", "KZ-5"):
        for hour in range(35 * 24 + 16):
            at = start + timedelta(hours=hour)
            if rng.random() < 0.1 or at > NOW:
                continue  # the agent was off
            checks = 60 if 8 <= at.hour < 20 else 0
            points.append((school, at, rng.randint(0, checks), checks))
    points.append(("KZ-6", NOW - timedelta(hours=3), 10, 60))  # a school new today
    return points


def test_the_sums_are_those_of_the_points_in_the_window(database: Influx) -> None:
    points = _fleet(random.Random(7))
    _write(database, points)
    checks = SchoolChecks(database.client)
    for at in (NOW, NOW - timedelta(days=2, minutes=13), NOW.replace(hour=0, minute=0, second=0)):
        for days in (30.0, 1.5, 0.25):
            assert checks.window(at, days) == _truth(points, at, days), (at, days)


def test_settled_days_are_read_once_and_a_late_point_is_counted_once_marked(
    database: Influx,
) -> None:
    points = _fleet(random.Random(8))
    _write(database, points)
    checks = SchoolChecks(database.client)
    assert checks.window(NOW, 30) == _truth(points, NOW, 30)
    read = checks.days_read
    assert 27 <= read <= 29  # the whole, settled days of the window
    assert checks.window(NOW + timedelta(minutes=5), 30) == _truth(
        points, NOW + timedelta(minutes=5), 30
    )
    assert checks.days_read == read  # nothing read again

    late = ("KZ-1", NOW - timedelta(days=10, hours=2), 7, 60)  # an outbox after an outage
    _write(database, [late])
    assert checks.window(NOW, 30) != _truth([*points, late], NOW, 30)  # a kept day: unseen
    checks.stored_late(int((late[1] + timedelta(hours=1)).timestamp() * NS))
    assert checks.window(NOW, 30) == _truth([*points, late], NOW, 30)
    assert checks.days_read > read


def test_a_day_not_yet_settled_is_read_again_each_time(database: Influx) -> None:
    just_after_midnight = NOW.replace(hour=0, minute=30, second=0)
    assert SETTLE_S > 30 * 60
    yesterday_last_hour = ("KZ-1", just_after_midnight - timedelta(minutes=90), 60, 60)
    _write(database, [yesterday_last_hour])
    checks = SchoolChecks(database.client)
    assert checks.window(just_after_midnight, 30) == {"KZ-1": (60.0, 60.0)}
    arriving_now = ("KZ-1", just_after_midnight - timedelta(minutes=30), 30, 60)  # 23:00's report
    _write(database, [arriving_now])  # within LATE_S of its end: no marker
    assert checks.window(just_after_midnight, 30) == {"KZ-1": (90.0, 120.0)}
