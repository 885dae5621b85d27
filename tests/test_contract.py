"""The wire contract: topics, strict payloads, results that agree with their figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from agent.contract import (
    SPEED_RESULT_CODES,
    AgentState,
    AgentStatus,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
    StatusReason,
    TopicKind,
    parse_topic,
    subscription_for,
    topic_for,
)


def test_topics_have_one_subtree_per_school() -> None:
    assert topic_for("schools", "KZ-1", TopicKind.SPEED) == "schools/KZ-1/speed"
    assert topic_for("x/y", "KZ-1", TopicKind.AGENT) == "x/y/KZ-1/agent"
    assert subscription_for("x/y") == "x/y/+/+"
    assert parse_topic("x/y", "x/y/KZ-1/devices") == ("KZ-1", TopicKind.DEVICES)


@pytest.mark.parametrize(
    "topic",
    [
        "other/KZ-1/speed",
        "schools/KZ-1/speed/extra",
        "schools/KZ-1/weather",
        "schools/../speed",
        "schools//speed",
        "schools/KZ 1/speed",
    ],
)
def test_topics_outside_the_contract_are_not_parsed(topic: str) -> None:
    assert parse_topic("schools", topic) is None


def _success(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "message_id": "0" * 32,
        "school_id": "KZ-1",
        "agent_id": "a1",
        "measured_at": "2026-11-22T06:00:00Z",
        "result": "success",
        "result_code": 0,
        "threshold_mbps": 20,
        "download_mbps": 25.5,
        "upload_mbps": 10,
        "latency_ms": 30,
        "jitter_ms": 2.5,
        "meets_threshold": True,
        "bytes_received": 100,
        "bytes_sent": 50,
        "duration_s": 20,
    }
    return fields | overrides


def test_a_speed_report_round_trips_through_json() -> None:
    report = SpeedReport.model_validate_json(json.dumps(_success()))
    again = SpeedReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert report.measured_at == datetime(2026, 11, 22, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"download_mbps": "25.5"}, "valid number"),
        ({"measured_at": "2026-11-22T06:00:00"}, "timezone"),
        ({"latency_ms": -1}, "greater than or equal"),
        ({"download_mbps": 1e9}, "less than or equal"),
        ({"surprise": 1}, "Extra inputs"),
        ({"result_code": 3}, "does not match result"),
        ({"meets_threshold": False}, "disagrees"),
        ({"upload_mbps": None}, "carries download, upload"),
        ({"jitter_ms": None}, "latency, jitter"),
        ({"school_id": "KZ/1"}, "should match pattern"),
        ({"message_id": "not-hex"}, "should match pattern"),
        ({"schema_version": 2}, "Input should be 1"),
    ],
)
def test_speed_reports_are_strict(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        SpeedReport.model_validate_json(json.dumps(_success(**overrides)))


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(ValidationError, match="finite"):
        SpeedReport.model_validate_json(json.dumps(_success()).replace("25.5", "NaN"))


def test_a_failed_test_carries_a_result_and_code_but_no_figures() -> None:
    failed = SpeedMeasurement.failed(SpeedResult.TIMEOUT, "timed out", threshold_mbps=20)
    assert failed.result_code == SPEED_RESULT_CODES[SpeedResult.TIMEOUT] == 3
    assert failed.download_mbps is None
    assert failed.meets_threshold is None
    with pytest.raises(ValidationError, match="no speed figures"):
        SpeedMeasurement(
            result=SpeedResult.TIMEOUT, result_code=3, threshold_mbps=20, download_mbps=5.0
        )


def test_result_codes_are_unique() -> None:
    assert len(set(SPEED_RESULT_CODES.values())) == len(SpeedResult)


def test_an_online_status_must_carry_host_health() -> None:
    with pytest.raises(ValidationError, match="host health"):
        AgentStatus(
            school_id="KZ-1",
            agent_id="a1",
            status=AgentState.ONLINE,
            reason=StatusReason.STARTED,
            version="1",
            boot_id="0" * 32,
        )
