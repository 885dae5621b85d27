"""The collector's memory of devices: the stale rule after a restart, and report numbering."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.contract import (
    AgentState,
    AgentStatus,
    DeviceKind,
    DeviceObservation,
    DevicesReport,
    DeviceState,
    StatusReason,
)
from collector.device_book import DeviceBook, KnownDevice
from collector.influx.query import influx_lookup
from collector.influx.v1 import V1Writer
from collector.points import PointMaker
from collector.settings import InfluxSettings
from tests.support.services import Influx

AT = datetime(2026, 11, 22, 8, tzinfo=UTC)
BOOT_A, BOOT_B = "a" * 32, "b" * 32


def _report(school: str, sequence: int, boot: str = BOOT_A, *devices: str) -> DevicesReport:
    return DevicesReport(
        school_id=school,
        agent_id="agent-1",
        measured_at=AT,
        boot_id=boot,
        sequence=sequence,
        full=True,
        devices=[
            DeviceObservation(
                device_id=device,
                kind=DeviceKind.PANIC_BUTTON,
                label=f"Button {device}",
                state=DeviceState.UP,
                changed_at=AT,
                result="success",
                result_code=0,
            )
            for device in devices
        ],
    )


def _will(school: str) -> AgentStatus:
    return AgentStatus(
        school_id=school,
        agent_id="agent-1",
        status=AgentState.OFFLINE,
        reason=StatusReason.CONNECTION_LOST,
        version="1",
        boot_id=BOOT_A,
    )


def test_a_collector_that_never_saw_the_school_finds_its_devices_in_influxdb(
    database: Influx,
) -> None:
    settings = InfluxSettings(url=database.url, database=database.database)
    earlier = PointMaker()  # the collector before its restart
    V1Writer(settings).write(earlier.lines(_report("KZ-9", 0, BOOT_A, "pb1", "pb2"), 0))

    fresh = PointMaker(DeviceBook(influx_lookup(database.client)))
    lines = fresh.lines(_will("KZ-9"), 5_000_000_000)
    V1Writer(settings).write(lines)

    stale = database.rows("SELECT * FROM device WHERE state = 'stale'")
    assert sorted((r["device_id"], r["kind"], r["state_code"]) for r in stale) == [
        ("pb1", "panic_button", 4),
        ("pb2", "panic_button", 4),
    ]
    assert fresh.book.devices_of("KZ-other") == []


def test_an_unreachable_influxdb_leaves_the_will_stored_without_stale_points() -> None:
    def broken(_school: str) -> list[KnownDevice]:
        raise ConnectionError("InfluxDB is down")

    maker = PointMaker(DeviceBook(broken))
    lines = maker.lines(_will("KZ-1"), 1)
    assert len(lines) == 1
    assert lines[0].startswith("agent,")


def test_numbering_sees_gaps_restarts_and_redeliveries() -> None:
    book = DeviceBook()
    assert book.remember(_report("KZ-1", 0, BOOT_A, "pb1")).missing == 0
    assert book.remember(_report("KZ-1", 1, BOOT_A)).missing == 0
    gap = book.remember(_report("KZ-1", 4, BOOT_A))
    assert (gap.missing, gap.restarted, gap.repeated) == (2, False, False)
    assert book.remember(_report("KZ-1", 4, BOOT_A)).repeated
    restart = book.remember(_report("KZ-1", 0, BOOT_B))
    assert (restart.missing, restart.restarted) == (0, True)
    assert book.remember(_report("KZ-2", 7, BOOT_A)).missing == 0  # first sight: no judgement
    assert [d.device_id for d in book.devices_of("KZ-1")] == ["pb1"]


def test_a_report_that_repeats_a_device_keeps_its_entry_and_a_change_replaces_it() -> None:
    book = DeviceBook()
    book.remember(_report("KZ-1", 0, BOOT_A, "pb1", "pb2"))
    (first, _) = book.devices_of("KZ-1")
    book.remember(_report("KZ-1", 1, BOOT_A, "pb1", "pb2"))
    assert book.devices_of("KZ-1")[0] is first  # the same: nothing allocated again
    moved = _report("KZ-1", 2, BOOT_A, "pb1").model_copy(update={"agent_id": "agent-2"})
    book.remember(moved)  # another agent now watches pb1
    assert book.devices_of("KZ-1") == [
        KnownDevice("agent-2", "pb1", "panic_button", "Button pb1"),
        KnownDevice("agent-1", "pb2", "panic_button", "Button pb2"),
    ]
