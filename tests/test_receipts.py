"""Receipts: the agent keeps each message until the collector says InfluxDB has it.

Real Mosquitto, InfluxDB and collector process; the agent's real publisher and
outbox. The collector announces receipts on a topic of the test's own.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from localstack import Mosquitto, Process

from agent.contract import AgentState, SpeedReport, StatusReason, TopicKind
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.settings import AgentMqttSettings, OutboxSettings
from tests.conftest import capabilities_topic, start_collector
from tests.support.publishing import host_health, speed_report
from tests.support.services import (
    Influx,
    collector_process,
    command_env,
    run_agent,
    wait_for,
)


def _publisher(
    made: list[Publisher],
    broker: Mosquitto,
    outbox: Outbox,
    topic_root: str,
    school_id: str,
    **mqtt: object,
) -> Publisher:
    settings = AgentMqttSettings.model_validate(
        {
            "url": broker.url,
            "topic_root": topic_root,
            "capabilities_topic": capabilities_topic(topic_root),
        }
        | mqtt
    )
    publisher = Publisher(
        settings,
        outbox,
        plan=OutboxSettings(replay_rate_per_s=200, receipt_grace_s=1, receipt_timeout_s=600),
        school_id=school_id,
        agent_id="a1",
        boot_id="0" * 32,
        version="test",
    )
    made.append(publisher)
    publisher.start()
    return publisher


def _reports(school_id: str, count: int, start: int = 0) -> list[SpeedReport]:
    base = datetime.now(UTC) - timedelta(hours=1)
    return [
        speed_report(school_id, "a1", 30.0 + n, base + timedelta(seconds=n))
        for n in range(start, start + count)
    ]


def _stored_ids(database: Influx, school_id: str) -> list[str]:
    rows = database.rows(f"SELECT message_id FROM speed WHERE school_id = '{school_id}'")
    return [row["message_id"] for row in rows]


def test_a_message_acknowledged_by_the_broker_stays_until_its_receipt(
    broker: Mosquitto,
    collector: Process,
    database: Influx,
    topic_root: str,
    school_id: str,
    tmp_path: Path,
    publishers: list[Publisher],
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = _publisher(publishers, broker, outbox, topic_root, school_id)
    wait_for(lambda: publisher.receipts, what="the collector's announcement")
    collector.stop()  # the broker acknowledges, but nothing stores
    reports = _reports(school_id, 5)
    for report in reports:
        publisher.publish(report, TopicKind.SPEED)
    wait_for(lambda: outbox.stats().awaiting_receipt == 5, what="five PUBACKs")
    assert outbox.stats().messages == 5  # acknowledged, and still kept
    start_collector(collector)
    wait_for(lambda: outbox.stats().messages == 0, what="the receipts")
    assert sorted(_stored_ids(database, school_id)) == sorted(r.message_id for r in reports)
    delivery = outbox.delivery()
    assert delivery.confirmed == 5
    assert delivery.last_stored_at is not None
    status = publisher.status(AgentState.ONLINE, StatusReason.HEARTBEAT, host_health())
    assert status.last_stored_at is not None
    assert status.outbox is not None
    assert (status.outbox.awaiting_broker, status.outbox.awaiting_receipt) == (0, 0)


def test_receipts_lost_while_the_agent_was_away_make_it_send_again_without_a_duplicate(
    broker: Mosquitto,
    collector: Process,
    database: Influx,
    topic_root: str,
    school_id: str,
    tmp_path: Path,
    publishers: list[Publisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.publisher")
    outbox = Outbox(tmp_path / "outbox.db")
    # A session that ends with the connection: receipts sent while away are lost.
    first = _publisher(publishers, broker, outbox, topic_root, school_id, session_expiry_s=0)
    wait_for(lambda: first.receipts, what="the collector's announcement")
    collector.stop()
    reports = _reports(school_id, 5)
    for report in reports:
        first.publish(report, TopicKind.SPEED)
    wait_for(lambda: outbox.stats().awaiting_receipt == 5, what="five PUBACKs")
    first.close()
    start_collector(collector)  # stores all five; their receipts find no one
    wait_for(lambda: len(_stored_ids(database, school_id)) == 5, what="five stored")
    assert outbox.stats().awaiting_receipt == 5

    second = _publisher(publishers, broker, outbox, topic_root, school_id, session_expiry_s=0)
    later = _reports(school_id, 1, start=5)[0]
    second.publish(later, TopicKind.SPEED)  # its receipt shows the older ones went missing
    wait_for(lambda: outbox.stats().messages == 0, what="every message confirmed")
    assert "no receipt from the collector for 5 message(s)" in caplog.text
    ids = _stored_ids(database, school_id)
    assert sorted(ids) == sorted(r.message_id for r in [*reports, later])  # no duplicate


def test_a_refused_message_reaches_the_schools_status_log_and_doctor(
    broker: Mosquitto,
    collector: Process,
    topic_root: str,
    school_id: str,
    agent_env: dict[str, str],
    publishers: list[Publisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    state_dir = Path(agent_env["SCHOOL_AGENT_STATE_DIR"])
    state_dir.mkdir(parents=True)
    outbox = Outbox(state_dir / "outbox.db")
    publisher = _publisher(publishers, broker, outbox, topic_root, school_id)
    wait_for(lambda: publisher.receipts, what="the collector's announcement")
    # An agent with a bug: a device label past the contract's 200 characters.
    for _ in range(2):
        report = _devices_payload(school_id, label="x" * 300)
        outbox.put(f"{topic_root}/{school_id}/devices", report.encode())
    wait_for(lambda: outbox.stats().messages == 0, what="the refusals")
    delivery = outbox.delivery()
    assert delivery.refused == {"schema_violation": 2}
    assert delivery.last_refusal is not None
    assert "label" in delivery.last_refusal.detail
    logged = [r for r in caplog.records if "refused a message" in r.getMessage()]
    assert len(logged) == 1  # a reason is logged at most once an hour

    status = publisher.status(AgentState.ONLINE, StatusReason.HEARTBEAT, host_health())
    assert status.rejections is not None
    assert status.rejections.by_reason == {"schema_violation": 2}
    assert status.rejections.last_reason == "schema_violation"

    doctor = run_agent("doctor", env=agent_env)
    line = next(x for x in doctor.stdout.splitlines() if "delivery" in x)
    assert line.startswith("WARN")
    assert "2 message(s) refused" in line
    assert "schema_violation" in line
    assert "upgrade the agent" in line  # what to do


def test_an_unknown_school_hears_that_it_is_unknown(
    broker: Mosquitto,
    collector_env: dict[str, str],
    database: Influx,
    topic_root: str,
    school_id: str,
    agent_env: dict[str, str],
    tmp_path: Path,
    publishers: list[Publisher],
) -> None:
    registry = tmp_path / "schools.csv"
    registry.write_text("school_id,name,region,district\nKZ-KNOWN,Known,Almaty,Medeu\n")
    process = collector_process(
        tmp_path,
        command_env(**collector_env, SCHOOL_COLLECTOR_REGISTRY_FILE=str(registry)),
    )
    start_collector(process)
    try:
        state_dir = Path(agent_env["SCHOOL_AGENT_STATE_DIR"])
        state_dir.mkdir(parents=True)
        outbox = Outbox(state_dir / "outbox.db")
        publisher = _publisher(publishers, broker, outbox, topic_root, school_id)
        wait_for(lambda: publisher.receipts, what="the collector's announcement")
        publisher.publish(_reports(school_id, 1)[0], TopicKind.SPEED)
        wait_for(lambda: outbox.stats().messages == 0, what="the refusal")
        assert outbox.delivery().refused == {"unknown_school": 1}
        assert _stored_ids(database, school_id) == []
    finally:
        process.stop()

    # Nothing of this school was stored: the receipt that refused it must not say so.
    status = publisher.status(AgentState.ONLINE, StatusReason.HEARTBEAT, host_health())
    assert status.rejections is not None
    assert status.rejections.by_reason == {"unknown_school": 1}
    assert status.rejections.last_reason == "unknown_school"
    assert status.last_stored_at is None

    doctor = run_agent("doctor", env=agent_env)
    line = next(x for x in doctor.stdout.splitlines() if "delivery" in x)
    assert line.startswith("WARN")
    assert "1 message(s) refused" in line
    assert "unknown_school" in line
    assert "the ministry's registry" in line  # what to do
    assert "last stored centrally" not in line


def test_collectors_that_send_no_receipts_leave_the_puback_the_last_word(
    broker: Mosquitto,
    collector_env: dict[str, str],
    database: Influx,
    topic_root: str,
    school_id: str,
    tmp_path: Path,
    publishers: list[Publisher],
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.set_fact("receipts", "on")  # as an earlier collector had announced
    process = collector_process(
        tmp_path, command_env(**collector_env, SCHOOL_COLLECTOR_MQTT__RECEIPTS="false")
    )
    start_collector(process)
    try:
        publisher = _publisher(publishers, broker, outbox, topic_root, school_id)
        wait_for(lambda: not publisher.receipts, what="the announcement: no receipts")
        reports = _reports(school_id, 3)
        for report in reports:
            publisher.publish(report, TopicKind.SPEED)
        wait_for(lambda: outbox.stats().messages == 0, what="three PUBACKs")
        wait_for(lambda: len(_stored_ids(database, school_id)) == 3, what="three stored")
        assert outbox.fact("receipts") == "off"
    finally:
        process.stop()


def _devices_payload(school_id: str, *, label: str) -> str:
    now = datetime.now(UTC).isoformat()
    device = {
        "device_id": "panic-1", "kind": "panic_button", "label": label, "state": "up",
        "changed_at": now, "result": "success", "result_code": 0,
    }  # fmt: skip
    return json.dumps(
        {
            "schema_version": 1,
            "message_id": uuid.uuid4().hex,
            "school_id": school_id,
            "agent_id": "a1",
            "measured_at": now,
            "boot_id": "0" * 32,
            "sequence": 0,
            "full": True,
            "devices": [device],
        }
    )
