"""The collector's pipeline against a real InfluxDB: ack after write, one bad point, outages.

The pipeline answers through an ``Outlet``, its seam to MQTT; here a
recording outlet stands in for the broker session, the database is real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from localstack import InfluxDB, free_port

from agent.contract import (
    DeadLetter,
    Receipt,
    RejectReason,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
)
from collector.influx.v1 import V1Writer
from collector.pipeline import BACKLOG_WAITING, Incoming, Pipeline
from collector.settings import (
    BatchSettings,
    CollectorMqttSettings,
    CollectorSettings,
    InfluxSettings,
)
from tests.support.publishing import speed_report
from tests.support.services import Influx, unique, wait_for


class RecordingOutlet:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.letters: list[DeadLetter] = []
        self.receipts: list[tuple[str, Receipt]] = []
        self.events: list[str] = []  # "ack" and "receipt", in the order they happened
        self.lock = threading.Lock()

    def is_current(self, item: Incoming) -> bool:
        return True

    def ack(self, item: Incoming) -> None:
        with self.lock:
            self.acked.append(item.mid)
            self.events.append("ack")

    def dead_letter(self, letters: list[DeadLetter]) -> bool:
        with self.lock:
            self.letters.extend(letters)
        return True

    def receipt(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.receipts.append((topic, Receipt.model_validate_json(payload)))
            self.events.append("receipt")


def _settings(influx_url: str, database: str) -> CollectorSettings:
    return CollectorSettings(
        influx=InfluxSettings(url=influx_url, database=database, timeout_s=2),
        batch=BatchSettings(max_wait_s=0.1, retry_initial_s=0.1, retry_max_s=0.3),
        stats_interval_s=3600,
    )


def _incoming(reports: list[SpeedReport], topic_root: str = "schools") -> list[Incoming]:
    return [
        Incoming(
            mid=i + 1,
            qos=1,
            topic=f"{topic_root}/{r.school_id}/speed",
            payload=r.model_dump_json().encode(),
            generation=0,
            arrived_ns=time.time_ns(),
        )
        for i, r in enumerate(reports)
    ]


def _reports(count: int, failed_at: int | None = None) -> list[SpeedReport]:
    base = datetime.now(UTC) - timedelta(minutes=10)
    reports = [
        speed_report("KZ-1", "a1", 30.0 + i, base + timedelta(seconds=i)) for i in range(count)
    ]
    if failed_at is not None:
        failed = SpeedMeasurement.failed(SpeedResult.TIMEOUT, "timed out", threshold_mbps=20.0)
        reports[failed_at] = SpeedReport.of(
            failed, school_id="KZ-1", agent_id="a1", measured_at=reports[failed_at].measured_at
        )
    return reports


@pytest.fixture
def start_pipeline() -> Iterator[Callable[[Pipeline, RecordingOutlet], threading.Thread]]:
    threads: list[tuple[Pipeline, threading.Thread]] = []

    def start(pipeline: Pipeline, outlet: RecordingOutlet) -> threading.Thread:
        thread = threading.Thread(target=pipeline.run, args=(outlet,), daemon=True)
        thread.start()
        threads.append((pipeline, thread))
        return thread

    yield start
    for pipeline, thread in threads:
        pipeline.stop()
        thread.join(timeout=10)


def test_one_refused_point_is_dead_lettered_and_the_rest_of_the_batch_is_written(
    database: Influx, start_pipeline: Callable[[Pipeline, RecordingOutlet], threading.Thread]
) -> None:
    # An integer "error" field already in this shard: a failed test's string error conflicts.
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    writer.write([f"speed,school_id=KZ-0 error=1i {time.time_ns()}"])
    pipeline = Pipeline(writer, _settings(database.url, database.database))
    outlet = RecordingOutlet()
    items = _incoming(_reports(10, failed_at=4))
    for item in items:
        pipeline.submit(item)
    start_pipeline(pipeline, outlet)

    wait_for(lambda: len(outlet.acked) == 10, what="all ten acknowledgements")
    assert outlet.acked == [item.mid for item in items]
    assert [letter.reason for letter in outlet.letters] == [RejectReason.INFLUX_REJECTED]
    assert "field type conflict" in outlet.letters[0].detail
    assert outlet.letters[0].payload == items[4].payload.decode()
    stored = database.rows("SELECT download_mbps FROM speed WHERE school_id = 'KZ-1'")
    assert len(stored) == 9
    counters = pipeline.counters
    assert (counters.stored, counters.dead_lettered, counters.points_written) == (9, 1, 9)
    assert counters.rejected == {RejectReason.INFLUX_REJECTED: 1}


@pytest.fixture
def own_influxdb(tmp_path: Path) -> Iterator[InfluxDB]:
    server = InfluxDB(tmp_path / "influx", free_port(), free_port())
    server.start()
    yield server
    server.stop()


def test_each_school_gets_one_receipt_per_batch_naming_what_was_stored_and_refused(
    database: Influx, start_pipeline: Callable[[Pipeline, RecordingOutlet], threading.Thread]
) -> None:
    pipeline = Pipeline(
        V1Writer(InfluxSettings(url=database.url, database=database.database)),
        _settings(database.url, database.database),
    )
    outlet = RecordingOutlet()
    first = _reports(3)
    second = [
        speed_report("KZ-2", "a2", 50.0, datetime.now(UTC) - timedelta(minutes=1)),
        speed_report("KZ-2", "a2", 50.0, datetime.now(UTC) + timedelta(days=2)),  # its clock
    ]
    items = _incoming(first + second)
    posing = Incoming(  # KZ-2 publishing a message that claims to be KZ-1's
        mid=99, qos=1, topic="schools/KZ-2/speed", payload=first[0].model_copy(
            update={"message_id": "f" * 32}).model_dump_json().encode(),
        generation=0, arrived_ns=time.time_ns(),
    )  # fmt: skip
    for item in [*items, posing]:
        pipeline.submit(item)
    start_pipeline(pipeline, outlet)

    wait_for(lambda: len(outlet.acked) == 6, what="all six acknowledgements")
    receipts = dict(outlet.receipts)
    assert sorted(receipts) == ["schools/KZ-1/receipts", "schools/KZ-2/receipts"]
    kz1, kz2 = receipts["schools/KZ-1/receipts"], receipts["schools/KZ-2/receipts"]
    assert kz1.school_id == "KZ-1"
    assert kz1.refused == []
    assert kz1.stored == [report.message_id for report in first]
    assert kz2.stored == [second[0].message_id]
    refused = {refusal.message_id: refusal.reason for refusal in kz2.refused}
    assert refused == {second[1].message_id: "bad_timestamp", "f" * 32: "school_mismatch"}
    assert outlet.events.index("ack") > max(
        n for n, event in enumerate(outlet.events) if event == "receipt"
    )  # receipts first: a collector killed before them leaves every message unacknowledged


def test_influxdb_outage_holds_every_ack_until_the_points_are_stored(
    own_influxdb: InfluxDB, start_pipeline: Callable[[Pipeline, RecordingOutlet], threading.Thread]
) -> None:
    database = unique("db_")
    writer = V1Writer(InfluxSettings(url=own_influxdb.url, database=database))
    writer.ensure_database()
    own_influxdb.stop()
    pipeline = Pipeline(writer, _settings(own_influxdb.url, database))
    outlet = RecordingOutlet()
    items = _incoming(_reports(20))
    for item in items:
        pipeline.submit(item)
    start_pipeline(pipeline, outlet)

    wait_for(lambda: pipeline.counters.write_retries >= 3, what="retries during the outage")
    assert outlet.acked == [], "nothing may be acknowledged while InfluxDB is down"
    own_influxdb.start()
    wait_for(lambda: len(outlet.acked) == 20, what="the acknowledgements after recovery")
    stored = Influx(own_influxdb.url, database).rows("SELECT count(download_mbps) FROM speed")
    assert stored[0]["count"] == 20
    assert outlet.letters == []


def test_stopping_during_an_outage_ends_at_once_and_acknowledges_nothing(
    start_pipeline: Callable[[Pipeline, RecordingOutlet], threading.Thread],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    writer = V1Writer(InfluxSettings(url=url, database="nowhere", timeout_s=1))
    pipeline = Pipeline(writer, _settings(url, "nowhere"))
    outlet = RecordingOutlet()
    for item in _incoming(_reports(5)):
        pipeline.submit(item)
    thread = start_pipeline(pipeline, outlet)
    wait_for(lambda: pipeline.counters.write_retries >= 1, what="a failed write")

    pipeline.stop()
    thread.join(timeout=5)
    assert not thread.is_alive(), "stop must interrupt the retry loop"
    assert outlet.acked == []


class BrokenWriter:
    """A writer with a bug: not an outage, not a refusal, an error nobody expected."""

    def write(self, lines: list[str]) -> None:
        raise RuntimeError("a bug in the writer")

    def close(self) -> None:
        pass


def test_an_unexpected_error_while_storing_stops_the_collector_instead_of_hanging_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    pipeline = Pipeline(BrokenWriter(), _settings(url, "nowhere"))  # type: ignore[arg-type]
    outlet = RecordingOutlet()
    for item in _incoming(_reports(5)):
        pipeline.submit(item)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run(outlet)
        except RuntimeError as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=15)
    assert not thread.is_alive(), "run() must end when the store thread fails"
    assert [str(exc) for exc in raised] == ["a bug in the writer"]
    assert outlet.acked == [], "nothing unstored may be acknowledged"


def test_a_broker_sending_past_the_receive_window_waits_in_submit_not_in_memory() -> None:
    """Mosquitto 2.0.11 overruns the window while it drains a backlog; the queue stays bounded."""
    url = f"http://127.0.0.1:{free_port()}"
    settings = _settings(url, "nowhere").model_copy(
        update={"mqtt": CollectorMqttSettings(receive_maximum=3)}
    )
    pipeline = Pipeline(V1Writer(InfluxSettings(url=url, database="nowhere")), settings)
    items = _incoming(_reports(4))
    for item in items[:3]:
        pipeline.submit(item)
    fourth = threading.Thread(target=pipeline.submit, args=(items[3],), daemon=True)
    fourth.start()
    fourth.join(timeout=1)
    assert fourth.is_alive(), "past the window, paho's thread must wait for room"

    pipeline.stop()
    fourth.join(timeout=2)
    assert not fourth.is_alive(), "stopping must release paho's thread (the message stays unacked)"


def test_a_backlog_counts_as_draining_even_when_its_batches_are_cut_by_time(
    database: Influx, start_pipeline: Callable[[Pipeline, RecordingOutlet], threading.Thread]
) -> None:
    """Batches cut by max_wait_s never fill, yet thousands wait behind them: the rollup and
    the state keeper must still hold off while they drain."""
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    settings = _settings(database.url, database.database)
    settings.batch = BatchSettings(max_points=100_000, max_wait_s=0.02)
    pipeline = Pipeline(writer, settings)
    outlet = RecordingOutlet()
    items = _incoming(_reports(BACKLOG_WAITING * 4))
    for item in items:
        pipeline.submit(item)
    start_pipeline(pipeline, outlet)
    seen = set()
    deadline = time.monotonic() + 60
    while len(outlet.acked) < len(items) and time.monotonic() < deadline:
        seen.add(pipeline.draining())
        time.sleep(0.001)
    assert len(outlet.acked) == len(items)
    assert True in seen
    wait_for(lambda: not pipeline.draining() or None, what="the end of the drain")
