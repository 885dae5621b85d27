"""Measurements taken while the clock is wrong are held, dated right, and stored at their time.

The agent's wall clock and the kernel's verdict on it are the test's (two days
behind, then synchronised); the monotonic clock, the broker, the collector and
InfluxDB are real.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from localstack import Mosquitto, Process

from agent.clock_trust import KernelSync, TimeKeeper, restamped
from agent.connectivity import Cause, Ledger, Round
from agent.contract import (
    AgentState,
    DeviceKind,
    DeviceObservation,
    DevicesReport,
    DeviceState,
    SpeedReport,
    StatusReason,
    TopicKind,
)
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.settings import AgentMqttSettings, OutboxSettings
from tests.conftest import capabilities_topic
from tests.support.publishing import host_health, speed_report
from tests.support.services import Influx, TopicListener, wait_for

BEHIND = timedelta(days=2)


class WrongClock:
    """A wall clock that can be wrong, and the kernel's verdict on it."""

    def __init__(self, behind: timedelta) -> None:
        self.behind = behind
        self.synced: bool | None = False

    def wall(self) -> float:
        return time.time() - self.behind.total_seconds()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC)

    def synchronised(self) -> bool | None:
        return self.synced

    def sync(self) -> None:
        """NTP reached: the clock jumps to the right time and the kernel says so."""
        self.behind = timedelta(0)
        self.synced = True


def _publisher(
    made: list[Publisher],
    broker: Mosquitto,
    topic_root: str,
    school_id: str,
    outbox: Outbox,
    keeper: TimeKeeper,
) -> Publisher:
    publisher = Publisher(
        AgentMqttSettings(
            url=broker.url, topic_root=topic_root, capabilities_topic=capabilities_topic(topic_root)
        ),
        outbox,
        plan=OutboxSettings(replay_rate_per_s=200),
        school_id=school_id,
        agent_id="a1",
        boot_id="0" * 32,
        version="test",
        time_keeper=keeper,
    )
    made.append(publisher)
    publisher.start()
    wait_for(lambda: publisher.connected and publisher.receipts, what="receipts announced")
    return publisher


def _speed_times(database: Influx, school_id: str) -> dict[str, float]:
    rows = database.rows(f"SELECT message_id FROM speed WHERE school_id = '{school_id}'")
    return {row["message_id"]: datetime.fromisoformat(row["time"]).timestamp() for row in rows}


def _rejected(database: Influx) -> float:
    rows = database.rows('SELECT last("rejected") FROM "collector"')
    return float(rows[0]["last"]) if rows else 0.0


def test_a_clock_two_days_behind_that_then_syncs_stores_every_result_at_its_true_time(
    broker: Mosquitto,
    collector: Process,
    database: Influx,
    topic_root: str,
    school_id: str,
    tmp_path: Path,
    publishers: list[Publisher],
) -> None:
    clock = WrongClock(BEHIND)
    keeper = TimeKeeper(clock, wall=clock.wall)
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = _publisher(publishers, broker, topic_root, school_id, outbox, keeper)
    truth: dict[str, float] = {}
    for n in range(3):
        report = speed_report(school_id, "a1", 30.0 + n, clock.now())
        truth[report.message_id] = time.time()
        stored = publisher.publish(report, TopicKind.SPEED)
        assert stored > 0
        time.sleep(0.3)
    assert outbox.stats().held == 3  # not sent with a time two days off
    time.sleep(6)  # the agent looks for what it can date every 5 s
    assert outbox.stats().held == 3
    assert _speed_times(database, school_id) == {}

    clock.sync()
    wait_for(lambda: outbox.stats().messages == 0, what="the held results dated, sent, confirmed")
    stored_at = _speed_times(database, school_id)
    assert stored_at.keys() == truth.keys()
    for message_id, true_time in truth.items():
        assert abs(stored_at[message_id] - true_time) < 0.5  # not two days off
    assert _rejected(database) == 0.0  # nothing refused, silently or not


def test_with_ntp_blocked_the_collectors_receipts_give_the_time(
    broker: Mosquitto,
    collector: Process,
    database: Influx,
    topic_root: str,
    school_id: str,
    tmp_path: Path,
    publishers: list[Publisher],
) -> None:
    clock = WrongClock(BEHIND)  # never synchronised: the school's firewall blocks NTP
    keeper = TimeKeeper(clock, wall=clock.wall)
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = _publisher(publishers, broker, topic_root, school_id, outbox, keeper)
    report = speed_report(school_id, "a1", 42.0, clock.now())
    true_time = time.time()
    publisher.publish(report, TopicKind.SPEED)
    assert outbox.stats().held == 1
    status = publisher.status(
        AgentState.ONLINE, StatusReason.HEARTBEAT, host_health(), measured_at=clock.now()
    )
    assert status.clock_synced is False
    assert publisher.publish(status, TopicKind.AGENT) == 0  # sent at once, not kept

    wait_for(lambda: outbox.stats().messages == 0, what="the result dated by the receipt")
    assert keeper.has_reference
    stored_at = _speed_times(database, school_id)[report.message_id]
    assert abs(stored_at - true_time) < 1.0
    rows = database.rows(
        f"SELECT clock_synced FROM agent WHERE school_id = '{school_id}' ORDER BY time DESC LIMIT 1"
    )
    assert rows[0]["clock_synced"] == 0
    status_time = datetime.fromisoformat(rows[0]["time"]).timestamp()
    assert abs(status_time - time.time()) < 60  # at its arrival, not two days ago
    assert _rejected(database) == 0.0


def test_a_status_made_before_the_broker_answered_goes_out_once_it_does(
    broker: Mosquitto, topic_root: str, school_id: str, tmp_path: Path
) -> None:
    clock = WrongClock(BEHIND)
    keeper = TimeKeeper(clock, wall=clock.wall)
    publisher = Publisher(
        AgentMqttSettings(url=broker.url, topic_root=topic_root),
        Outbox(tmp_path / "outbox.db"),
        school_id=school_id, agent_id="a1", boot_id="0" * 32, version="test",
        time_keeper=keeper,
    )  # fmt: skip
    listener = TopicListener(broker.port, f"{topic_root}/{school_id}/agent")
    try:
        status = publisher.status(
            AgentState.ONLINE, StatusReason.STARTED, host_health(), measured_at=clock.now()
        )
        assert publisher.publish(status, TopicKind.AGENT) == 0  # not connected yet
        publisher.start()  # as the daemon does: the connection comes after the first status
        found = wait_for(
            lambda: [m for m in listener.snapshot() if m["reason"] == "started"],
            what="the started status",
        )
        assert found[0]["clock_synced"] is False
    finally:
        publisher.close()
        listener.close()


def test_what_was_held_across_a_reboot_cannot_be_dated_and_is_counted(tmp_path: Path) -> None:
    clock = WrongClock(BEHIND)
    outbox = Outbox(tmp_path / "outbox.db")
    before = TimeKeeper(clock, wall=clock.wall, boot_id="boot-1")
    report = speed_report("KZ-1", "a1", 10.0, clock.now())
    outbox.put("t/KZ-1/speed", report.model_dump_json().encode(), held=("boot-1", 100.0))
    after = TimeKeeper(clock, wall=clock.wall, boot_id="boot-2")
    assert before.datable("boot-1")
    assert not after.datable("boot-1")
    assert after.true_time(100.0, "boot-1") is None
    clock.sync()
    assert after.true_time(100.0, "boot-1") is None  # even now: its monotonic clock restarted
    assert outbox.undatable([h.id for h in outbox.held()]) == 1
    assert outbox.delivery().undatable == 1
    assert outbox.stats().messages == 0


def test_restamping_moves_every_time_a_message_carries_by_the_same_amount() -> None:
    wrong = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    device = DeviceObservation(
        device_id="gate", kind=DeviceKind.TURNSTILE, label="Gate", state=DeviceState.UP,
        changed_at=wrong - timedelta(minutes=3), result="success", result_code=0,
    )  # fmt: skip
    report = DevicesReport(
        school_id="KZ-1", agent_id="a1", measured_at=wrong, boot_id="0" * 32, sequence=0,
        full=True, devices=[device],
    )  # fmt: skip
    true = wrong + BEHIND
    moved = restamped(report, true.timestamp())
    assert isinstance(moved, DevicesReport)
    assert moved.measured_at == true
    assert moved.devices[0].changed_at == true - timedelta(minutes=3)
    assert moved.message_id == report.message_id  # the same message, only dated
    speed = speed_report("KZ-1", "a1", 10.0, wrong)
    assert isinstance(restamped(speed, true.timestamp()), SpeedReport)


def test_a_receipt_that_took_long_to_come_back_does_not_set_the_time() -> None:
    clock = WrongClock(BEHIND)
    now = [1000.0]
    keeper = TimeKeeper(clock, wall=clock.wall, monotonic=lambda: now[0], boot_id="b")
    keeper.heard(stored_at_s=5_000_000.0, sent_monotonic=now[0] - 30)  # a 30 s round trip
    assert keeper.true_time(990.0, "b") is None
    keeper.heard(stored_at_s=5_000_000.0, sent_monotonic=now[0] - 0.4)
    assert keeper.true_time(990.0, "b") == pytest.approx(5_000_000.0 + 0.2 - 10)


def test_the_kernel_answers_whether_this_clock_is_synchronised() -> None:
    assert KernelSync().synchronised() in (True, False)  # adjtimex(2) read, not a guess


def test_connectivity_counted_under_a_wrong_clock_is_stored_at_its_true_time(
    broker: Mosquitto,
    collector: Process,
    database: Influx,
    topic_root: str,
    school_id: str,
    tmp_path: Path,
    publishers: list[Publisher],
) -> None:
    """A period's counts and an outage, recorded two days behind, are held, then stored at
    their true start once the clock syncs; the outage's end moves with its start."""
    clock = WrongClock(BEHIND)
    keeper = TimeKeeper(clock, wall=clock.wall)
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = _publisher(publishers, broker, topic_root, school_id, outbox, keeper)
    ledger = Ledger(interval_s=5, report_s=60, boot_id=keeper.boot_id)
    wall, mono = clock.wall(), time.monotonic()
    for tick in range(-30, 1):  # the last two and a half minutes, rounds every 5 s
        cause: Cause | None = "upstream" if -20 <= tick < -16 else None
        at = wall + 5 * tick
        ledger.record(Round(at, cause, mono=mono + 5 * tick, believed=keeper.synchronised()))
    outages, periods = ledger.take()
    assert len(outages) == 1
    assert len(periods) >= 2
    for period in periods:
        publisher.publish(
            period.report(school_id, "a1", 5, 60),
            TopicKind.CONNECTIVITY,
            measured_monotonic=period.start_mono,
        )
    outage = outages[0].report(school_id, "a1")
    publisher.publish(outage, TopicKind.OUTAGE, measured_monotonic=outages[0].start_mono)
    assert outbox.stats().held == len(periods) + 1

    clock.sync()
    wait_for(lambda: outbox.stats().messages == 0, what="the held counts dated, sent, confirmed")
    offset = time.time() - time.monotonic()  # the true time of a monotonic instant
    rows = database.rows(f"SELECT checks FROM connectivity WHERE school_id = '{school_id}'")
    stored = sorted(datetime.fromisoformat(row["time"]).timestamp() for row in rows)
    truth = sorted(p.start_mono + offset for p in periods if p.start_mono is not None)
    assert stored == pytest.approx(truth, abs=0.5)  # not two days off
    rows = database.rows(
        f"SELECT duration_s, ended_at_ms FROM outage WHERE school_id = '{school_id}'"
    )
    assert len(rows) == 1
    start = datetime.fromisoformat(rows[0]["time"]).timestamp()
    assert start == pytest.approx(mono - 100 + offset, abs=0.5)
    assert rows[0]["duration_s"] == 20.0
    assert rows[0]["ended_at_ms"] / 1000 == pytest.approx(start + 20.0, abs=0.01)
    assert _rejected(database) == 0.0
