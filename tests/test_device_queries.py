"""The README's device queries answer their questions on known data in a real InfluxDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.contract import (
    AgentState,
    AgentStatus,
    DeviceKind,
    DeviceObservation,
    DevicesReport,
    DeviceState,
    StatusReason,
)
from collector.influx.v1 import V1Writer
from collector.points import PointMaker
from collector.settings import InfluxSettings
from tests.support import readmes
from tests.support.services import Influx

README = readmes.combined()


def _readme_query(comment: str) -> str:
    lines = README.splitlines()
    return lines[lines.index(f"-- {comment}") + 1]


def _report(school: str, *devices: tuple[str, DeviceKind, DeviceState]) -> DevicesReport:
    now = datetime.now(UTC)
    return DevicesReport(
        school_id=school,
        agent_id="a1",
        measured_at=now - timedelta(minutes=1),
        boot_id="0" * 32,
        sequence=0,
        full=True,
        devices=[
            DeviceObservation(
                device_id=device_id,
                kind=kind,
                label=device_id,
                state=state,
                changed_at=now - timedelta(hours=1),
                result="success" if state is DeviceState.UP else "timeout",
                result_code=0 if state is DeviceState.UP else 1,
            )
            for device_id, kind, state in devices
        ],
    )


PANIC, GATE = DeviceKind.PANIC_BUTTON, DeviceKind.TURNSTILE
UP, DOWN, LATE = DeviceState.UP, DeviceState.DOWN, DeviceState.LATE


def _store(database: Influx) -> None:
    maker = PointMaker()
    messages = [
        _report("S-A", ("pb1", PANIC, UP)),
        _report("S-B", ("pb1", PANIC, DOWN), ("pb2", PANIC, UP)),  # one live button is enough
        _report("S-C", ("pb1", PANIC, DOWN), ("gate", GATE, UP)),
        _report("S-D", ("gate", GATE, UP)),  # no panic button at all
        _report("S-E", ("pb1", PANIC, UP)),  # ... but its agent is then lost
        _report("S-F", ("pb1", PANIC, LATE)),
    ]
    lines = [line for m in messages for line in maker.lines(m, 0)]
    will = AgentStatus(
        school_id="S-E",
        agent_id="a1",
        status=AgentState.OFFLINE,
        reason=StatusReason.CONNECTION_LOST,
        version="1",
        boot_id="0" * 32,
    )
    lines += maker.lines(will, int(datetime.now(UTC).timestamp() * 1e9))
    V1Writer(InfluxSettings(url=database.url, database=database.database)).write(lines)


def test_schools_with_a_live_panic_button_are_counted(database: Influx) -> None:
    _store(database)
    rows = database.rows(
        _readme_query(
            "how many schools have a live panic button now (reported in the last 15 minutes)"
        )
    )
    assert rows[0]["count"] == 2  # S-A and S-B; not down, late, stale, or absent


def test_devices_not_up_are_listed_with_their_state(database: Influx) -> None:
    _store(database)
    series = database.client.query(
        _readme_query(
            "every device that is not up now, with its state and since when (ms since the epoch)"
        )
    )
    found = {(s.tags["school_id"], s.tags["device_id"]): s.rows()[0]["state"] for s in series}
    assert found == {
        ("S-B", "pb1"): "down",
        ("S-C", "pb1"): "down",
        ("S-E", "pb1"): "stale",
        ("S-F", "pb1"): "late",
    }
