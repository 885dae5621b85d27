"""The publisher delivers its whole outbox, in order, through broker outages and restarts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from localstack import Mosquitto, free_port

from agent.contract import (
    AgentState,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
    StatusReason,
    TopicKind,
)
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.settings import AgentMqttSettings, OutboxSettings
from tests.support.publishing import host_health
from tests.support.services import TopicListener, unique, wait_for


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, so that it can be stopped and started."""
    server = Mosquitto(tmp_path / "mosquitto", free_port())
    yield server
    server.stop()


def _report(school_id: str, number: int) -> SpeedReport:
    failed = SpeedMeasurement.failed(SpeedResult.TIMEOUT, f"test {number}", threshold_mbps=20)
    at = datetime(2026, 11, 22, tzinfo=UTC) + timedelta(minutes=number)
    return SpeedReport.of(failed, school_id=school_id, agent_id="a1", measured_at=at)


def _publisher(broker: Mosquitto, outbox: Outbox, root: str, school_id: str) -> Publisher:
    settings = AgentMqttSettings(url=broker.url, topic_root=root)
    plan = OutboxSettings(replay_rate_per_s=200, max_in_flight=10, resend_after_s=5)
    return Publisher(
        settings,
        outbox,
        plan=plan,
        school_id=school_id,
        agent_id="a1",
        boot_id="0" * 32,
        version="test",
    )


def test_measurements_taken_while_the_broker_is_down_arrive_in_order(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    root, school_id = unique("t-") + "/schools", unique("KZ-")
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = _publisher(own_broker, outbox, root, school_id)
    publisher.start()  # the broker is not running yet
    reports = [_report(school_id, n) for n in range(30)]
    ids = [publisher.publish(r, TopicKind.SPEED) for r in reports]
    assert outbox.stats().messages == 30

    own_broker.start()
    listener = TopicListener(own_broker.port, f"{root}/+/speed")
    try:
        publisher.wait_acked(ids, timeout=60)
        wait_for(lambda: len(listener.snapshot()) >= 30, what="30 messages at the listener")
    finally:
        publisher.close()
        listener.close()
    received = [m["message_id"] for m in listener.snapshot()]
    assert received == [r.message_id for r in reports]  # in order, once each
    assert outbox.stats().messages == 0


def test_what_a_stopped_agent_left_in_its_outbox_is_sent_by_the_next_run(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    root, school_id = unique("t-") + "/schools", unique("KZ-")
    path = tmp_path / "outbox.db"
    first = _publisher(own_broker, Outbox(path), root, school_id)
    first.start()
    reports = [_report(school_id, n) for n in range(5)]
    for report in reports:
        first.publish(report, TopicKind.SPEED)
    first.close()  # never reached a broker

    own_broker.start()
    listener = TopicListener(own_broker.port, f"{root}/+/speed")
    outbox = Outbox(path)
    second = _publisher(own_broker, outbox, root, school_id)
    second.start()
    try:
        wait_for(lambda: outbox.stats().messages == 0, timeout=60, what="the outbox to empty")
        wait_for(lambda: len(listener.snapshot()) >= 5, what="5 messages at the listener")
    finally:
        second.close()
        listener.close()
    received = [m["message_id"] for m in listener.snapshot()]
    assert received == [r.message_id for r in reports]
    assert [m["measured_at"][:16] for m in listener.snapshot()] == [
        r.measured_at.isoformat()[:16] for r in reports
    ]  # original times, not the time of sending


def test_a_broker_restart_mid_stream_loses_nothing(own_broker: Mosquitto, tmp_path: Path) -> None:
    root, school_id = unique("t-") + "/schools", unique("KZ-")
    own_broker.start()
    listener_messages: list[str] = []
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = _publisher(own_broker, outbox, root, school_id)
    publisher.start()
    reports = [_report(school_id, n) for n in range(60)]
    listener = TopicListener(own_broker.port, f"{root}/+/speed")
    try:
        for report in reports[:30]:
            publisher.publish(report, TopicKind.SPEED)
        wait_for(lambda: outbox.stats().messages == 0, timeout=60, what="the first 30 acked")
        listener_messages += [m["message_id"] for m in listener.snapshot()]
        listener.close()
        own_broker.stop()
        for report in reports[30:]:
            publisher.publish(report, TopicKind.SPEED)  # into the outbox while it is down
        assert outbox.stats().messages == 30
        own_broker.start()
        listener = TopicListener(own_broker.port, f"{root}/+/speed")
        wait_for(lambda: outbox.stats().messages == 0, timeout=90, what="the rest acked")
        wait_for(lambda: len(listener.snapshot()) >= 30, what="the rest at the listener")
        listener_messages += [m["message_id"] for m in listener.snapshot()]
    finally:
        publisher.close()
        listener.close()
    assert listener_messages == [r.message_id for r in reports]


def test_the_agent_status_reports_the_outbox_and_its_drops(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=2000)
    publisher = Publisher(
        AgentMqttSettings(url=f"mqtt://127.0.0.1:{free_port()}", topic_root="t"),
        outbox,
        school_id="KZ-1",
        agent_id="a1",
        boot_id="0" * 32,
        version="test",
    )  # never started: nothing leaves the outbox
    for number in range(10):
        publisher.publish(_report("KZ-1", number), TopicKind.SPEED)
    status = publisher.status(AgentState.ONLINE, StatusReason.HEARTBEAT, host_health())
    assert status.outbox is not None
    assert status.outbox.messages == outbox.stats().messages < 10
    assert status.outbox.dropped == 10 - status.outbox.messages
    assert status.outbox.bytes <= 2000
    offline = publisher.status(AgentState.OFFLINE, StatusReason.CONNECTION_LOST)
    assert offline.outbox is None  # the Last Will is written long before it fires
