"""School hours: which of an agent's hourly checks count for availability in school hours."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from agent.contract import ConnectivityReport
from collector.points import PointMaker
from collector.settings import CollectorSettings, SchoolHoursSettings


def _hour(hour_utc: int) -> datetime:
    return datetime(2026, 12, 1, hour_utc, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timezone", "hour_utc", "inside"),
    [
        ("+05:00", 2, False),  # 07:00-08:00 in Astana
        ("+05:00", 3, True),  # 08:00-09:00
        ("+05:00", 14, True),  # 19:00-20:00
        ("+05:00", 15, False),  # 20:00-21:00
        ("+05:30", 2, True),  # 07:30-08:30: its middle is 08:00
        ("+05:30", 14, False),  # 19:30-20:30: its middle is 20:00
        ("Asia/Almaty", 3, True),
    ],
)
def test_an_hour_is_a_school_hour_when_its_middle_is(
    timezone: str, hour_utc: int, inside: bool
) -> None:
    hours = SchoolHoursSettings(timezone=timezone).school_hours()
    assert hours.covers_hour(_hour(hour_utc)) is inside


@pytest.mark.parametrize(("hour_utc", "school"), [(3, (60, 57)), (15, (0, 0))])
def test_the_collector_stores_the_checks_of_school_hours_apart(
    hour_utc: int, school: tuple[int, int]
) -> None:
    report = ConnectivityReport(
        school_id="KZ-1", agent_id="a1", measured_at=_hour(hour_utc), interval_s=60.0,
        checks=60, passed=57, down_upstream_s=180.0,
    )  # fmt: skip
    maker = PointMaker(school_hours=SchoolHoursSettings().school_hours())
    line = maker.lines(report, 0)[0]
    assert "checks=60i" in line
    assert "passed=57i" in line
    assert f"school_checks={school[0]}i" in line
    assert f"school_passed={school[1]}i" in line


@pytest.mark.parametrize(
    ("name", "value"),
    [("hours", "20:00-08:00"), ("hours", "8 to 20"), ("timezone", "Mars/Olympus")],
)
def test_a_wrong_school_hours_setting_names_itself(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CollectorSettings.model_validate({"school_hours": {name: value}})
    assert f"school_hours.{name}" in str(caught.value)
