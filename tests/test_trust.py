"""The collector trusts nothing: unregistered schools and implausible times are rejected."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.contract import (
    AgentState,
    AgentStatus,
    RejectReason,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
    StatusReason,
)
from collector.intake import Accepted, Rejection, Trust, decode
from collector.points import PointMaker
from collector.registry import RegistryError, School, SchoolRegistry

NOW = datetime(2026, 11, 22, 8, tzinfo=UTC)
REGISTRY = SchoolRegistry([School("KZ-1", "Almaty"), School("KZ-2", "Astana")])


def _speed(school: str = "KZ-1", at: datetime = NOW) -> bytes:
    failed = SpeedMeasurement.failed(SpeedResult.TIMEOUT, "x", threshold_mbps=20)
    report = SpeedReport.of(failed, school_id=school, agent_id="a1", measured_at=at)
    return report.model_dump_json().encode()


def _decode(payload: bytes, school: str = "KZ-1", trust: Trust | None = None) -> object:
    trust = trust or Trust(REGISTRY)
    return decode("schools", f"schools/{school}/speed", payload, 65536, trust=trust, now=NOW)


def _reason(result: object) -> RejectReason:
    assert isinstance(result, Rejection), result
    return result.reason


def test_a_registered_school_is_accepted() -> None:
    assert isinstance(_decode(_speed()), Accepted)


def test_an_unregistered_school_is_rejected() -> None:
    result = _decode(_speed("KZ-9"), school="KZ-9")
    assert _reason(result) is RejectReason.UNKNOWN_SCHOOL


def test_without_a_registry_any_school_is_accepted() -> None:
    assert isinstance(_decode(_speed("KZ-9"), school="KZ-9", trust=Trust()), Accepted)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (timedelta(minutes=4), True),
        (timedelta(minutes=6), False),
        (timedelta(days=-59), True),
        (timedelta(days=-61), False),
        (timedelta(days=3650), False),
    ],
)
def test_measured_at_must_be_plausible(offset: timedelta, accepted: bool) -> None:
    result = _decode(_speed(at=NOW + offset))
    if accepted:
        assert isinstance(result, Accepted)
    else:
        assert _reason(result) is RejectReason.BAD_TIMESTAMP


def test_an_old_last_will_is_accepted_it_is_stored_at_its_arrival() -> None:
    will = AgentStatus(
        school_id="KZ-1",
        agent_id="a1",
        measured_at=NOW - timedelta(days=90),
        status=AgentState.OFFLINE,
        reason=StatusReason.CONNECTION_LOST,
        version="1",
        boot_id="0" * 32,
    )
    result = decode(
        "schools", "schools/KZ-1/agent", will.model_dump_json().encode(), 65536,
        trust=Trust(REGISTRY), now=NOW,
    )  # fmt: skip
    assert isinstance(result, Accepted)


def test_points_carry_the_registry_region() -> None:
    accepted = _decode(_speed())
    assert isinstance(accepted, Accepted)
    line = PointMaker(place_of=REGISTRY.place_of).lines(accepted.message, 0)[0]
    assert ",region=Almaty," in line


def test_the_registry_loads_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "schools.csv"
    path.write_text('school_id,name,region\nKZ-1,School 1,Almaty\nKZ-2,"Lyceum, 2",Astana\n')
    registry = SchoolRegistry.load(path)
    assert len(registry) == 2
    assert registry.region_of("KZ-2") == "Astana"
    assert "KZ-3" not in registry
    assert [s.name for s in registry] == ["School 1", "Lyceum, 2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("school_id,name\nKZ-1,x\n", "missing: region"),
        ("school_id,region\nKZ 1,Almaty\n", "line 2: school_id 'KZ 1'"),
        ("school_id,region\nKZ-1,Almaty\nKZ-1,Astana\n", "line 3: school KZ-1 is listed twice"),
        ("school_id,region\nKZ-1,\n", "line 2: region"),
    ],
)
def test_a_bad_registry_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "schools.csv"
    path.write_text(text)
    with pytest.raises(RegistryError, match=message):
        SchoolRegistry.load(path)


@pytest.mark.parametrize("field", ["message_id", "measured_at", "schema_version"])
def test_a_payload_must_carry_its_own_id_time_and_version(field: str) -> None:
    """A default filled in here would differ on a redelivery: a duplicate point."""
    document = json.loads(_speed())
    del document[field]
    result = _decode(json.dumps(document).encode())
    assert _reason(result) is RejectReason.SCHEMA_VIOLATION
    assert isinstance(result, Rejection)
    assert result.detail == f"missing fields: {field}"
