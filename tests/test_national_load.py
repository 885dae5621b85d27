"""The ingest benchmark's load is what agents send: valid, and as many points as it claims."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from agent.contract import DEFAULT_TOPIC_ROOT, DevicesReport
from collector.intake import Accepted, decode
from collector.points import PointMaker
from tests.bench.national_load import (
    MIX,
    PER_DAY,
    POINTS,
    SchoolTemplates,
    kinds_in_mix,
    national_messages_per_s,
    national_points_per_day,
)
from tests.bench.storage import Day


@pytest.mark.parametrize("kind", sorted(POINTS))
def test_every_kind_is_accepted_and_makes_the_points_counted_for_it(kind: str) -> None:
    school = SchoolTemplates.of("KZ-A-00001", DEFAULT_TOPIC_ROOT)
    topic, body = school.render(kind)
    decoded = decode(DEFAULT_TOPIC_ROOT, topic, body, 65_536)
    assert isinstance(decoded, Accepted), decoded
    assert len(PointMaker().lines(decoded.message, 0)) == POINTS[kind]


def test_rendered_messages_are_unique_fresh_and_numbered_in_order() -> None:
    school = SchoolTemplates.of("KZ-A-00002", DEFAULT_TOPIC_ROOT)
    now = datetime.now(UTC)
    messages = []
    for kind in ["full", "change", "status", "full"]:
        decoded = decode(DEFAULT_TOPIC_ROOT, *school.render(kind, now), 65_536)
        assert isinstance(decoded, Accepted)
        messages.append(decoded.message)
    assert len({m.message_id for m in messages}) == 4
    assert all(abs(m.measured_at - now) < timedelta(milliseconds=1) for m in messages)
    reports = [m for m in messages if isinstance(m, DevicesReport)]
    assert [r.sequence for r in reports] == [1, 2, 3]


def test_the_mix_follows_a_school_day_at_default_settings() -> None:
    drawn = Counter(islice(kinds_in_mix(3), 100_000))
    for kind, share in MIX.items():
        assert drawn[kind] / 100_000 == pytest.approx(share, abs=0.005)
    assert national_messages_per_s() == pytest.approx(7400 * sum(PER_DAY.values()) / 86_400)


def test_the_storage_benchmarks_day_is_the_national_day_of_one_school() -> None:
    start = datetime(2026, 11, 20, tzinfo=UTC)
    lines = Day("KZ-A-00003", start, random.Random(5)).lines(PointMaker())
    assert len(lines) == national_points_per_day(1)
    times = sorted(int(line.rsplit(" ", 1)[1]) for line in lines)
    assert start.timestamp() * 1e9 <= times[0]
    assert times[-1] < (start.timestamp() + 86_400) * 1e9
    response_times = {part for line in lines for part in line.split(",") if "response_ms=" in part}
    assert len(response_times) > 100  # varied, as in service, not one repeated value
