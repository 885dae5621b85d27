"""The READMEs' tables are the contract: they must list what the code really does.

The root README, agent/README.md, collector/README.md and grafana/README.md are
read as one text (tests/support/readmes.py); every link in them resolves.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.contract import (
    AgentState,
    AgentStatus,
    ConfigState,
    ConnectivityReport,
    DeviceKind,
    DeviceObservation,
    DevicesReport,
    DeviceState,
    Envelope,
    HeartbeatCounts,
    HostHealth,
    OutageCause,
    OutageReport,
    OutboxCounts,
    RejectionCounts,
    RejectReason,
    ServerKind,
    SpeedMeasurement,
    SpeedMethod,
    SpeedMethodName,
    SpeedReport,
    SpeedResult,
    SpeedServer,
    StatusReason,
)
from agent.devices.inventory import DeviceConfig
from agent.settings import AgentSettings
from collector import retention
from collector.counters import Counters, over_budget_lines
from collector.influx.v1 import V1Writer
from collector.points import Place, PointMaker
from collector.registry import School, SchoolRegistry
from collector.registry_store import import_registry
from collector.settings import CollectorSettings, InfluxSettings
from collector.state_keeper import StateKeeper
from tests.support import readmes
from tests.support.services import Influx

README = readmes.combined()
TYPES = {"float": "float", "int": "integer", "string": "string"}


def _section(heading: str) -> str:
    start = README.index(heading)
    end = README.find("\n## ", start + len(heading))
    return README[start : end if end > 0 else None]


def _table_after(marker: str, within: str) -> list[list[str]]:
    """The rows (header and separator dropped) of the first table at or after ``marker``."""
    text = within[within.index(marker) :]
    start = 0 if text.startswith("|") else text.index("\n|") + 1
    table = text[start:].split("\n\n")[0]
    rows = re.findall(r"^\|(.+)\|$", table, re.MULTILINE)
    return [[cell.strip() for cell in row.split("|")] for row in rows[2:]]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _flat_settings(cls: type[BaseModel]) -> set[str]:
    """Every setting's dotted name; nested models are walked, lists (``devices``) are one."""
    names = set()
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {f"{name}.{sub}" for sub in _flat_settings(annotation)}
        else:
            names.add(name)
    return names


@pytest.mark.parametrize(
    ("heading", "cls"),
    [("### Agent settings", AgentSettings), ("### Collector settings", CollectorSettings)],
)
def test_settings_tables_list_every_setting(
    heading: str, cls: type[AgentSettings] | type[CollectorSettings]
) -> None:
    table = _table_after("| setting |", _section(heading))
    documented = {name for row in table for name in _names(row[0])}
    assert documented == _flat_settings(cls)


def test_device_table_lists_every_device_setting() -> None:
    table = _table_after("| device setting |", _section("## Safety devices"))
    documented = {name for row in table for name in _names(row[0])}
    assert documented == set(DeviceConfig.model_fields)


def _documented_measurement(name: str) -> dict[str, tuple[str, str]]:
    """{key: (tag|field, type)} from the README table of measurement ``name``."""
    table = _table_after(f"**`{name}`**", _section("## InfluxDB measurements"))
    keys: dict[str, tuple[str, str]] = {}
    for row in table:
        kind = row[1].split(" ")[0]
        for key in _names(row[0]):
            keys[key] = (kind, row[2])
    return keys


def _sample_messages() -> list[Envelope]:
    """One message of every kind, with every optional field filled, plus a failed test."""
    at = datetime(2026, 11, 22, 6, tzinfo=UTC)
    server = SpeedServer(kind=ServerKind.SELF_HOSTED, id="s", name="s", url="http://s")
    good = SpeedMeasurement(
        result=SpeedResult.SUCCESS,
        result_code=0,
        threshold_mbps=20.0,
        download_mbps=25.0,
        upload_mbps=10.0,
        latency_ms=20.0,
        jitter_ms=1.0,
        meets_threshold=True,
        bytes_received=10,
        bytes_sent=5,
        duration_s=1.0,
        server=server,
        method=SpeedMethod(
            name=SpeedMethodName.CONFIDENCE, congestion_control="bbr", connections=8
        ),
    )
    bad = SpeedMeasurement.failed(SpeedResult.TIMEOUT, "timed out", threshold_mbps=20.0)
    host = HostHealth(
        cpu_percent=1.0,
        memory_percent=2.0,
        memory_available_bytes=3,
        disk_percent=4.0,
        disk_free_bytes=5,
        uptime_s=6,
        load_1m=0.5,
        temperature_c=40.0,
    )
    device = DeviceObservation(
        device_id="pb1",
        kind=DeviceKind.PANIC_BUTTON,
        label="Panic button, main entrance",
        state=DeviceState.UP,
        changed_at=at,
        result="success",
        result_code=0,
        response_ms=3.0,
        detail="fine",
    )
    return [
        SpeedReport.of(good, school_id="KZ-1", agent_id="a1", measured_at=at),
        SpeedReport.of(bad, school_id="KZ-1", agent_id="a1", measured_at=at.replace(minute=1)),
        AgentStatus(
            school_id="KZ-1",
            agent_id="a1",
            measured_at=at,
            status=AgentState.ONLINE,
            reason=StatusReason.STARTED,
            version="1",
            boot_id="0" * 32,
            host=host,
            data_used_month_bytes=1,
            data_budget_month_bytes=2,
            heartbeats=HeartbeatCounts(accepted=1, unknown_device=2, bad_token=3, malformed=4),
            outbox=OutboxCounts(
                messages=1,
                bytes=700,
                oldest_age_s=0.5,
                dropped=0,
                awaiting_broker=0,
                awaiting_receipt=1,
                held=0,
                undatable=0,
            ),
            rejections=RejectionCounts(
                total=1, by_reason={"bad_timestamp": 1}, last_reason="bad_timestamp", last_at=at
            ),
            last_stored_at=at,
            clock_synced=True,
            config=ConfigState(
                version="all:3,region:5", refused_total=1, refused_by_reason={"replayed": 1}
            ),
        ),
        DevicesReport(
            school_id="KZ-1",
            agent_id="a1",
            measured_at=at,
            boot_id="0" * 32,
            sequence=1,
            full=True,
            devices=[device],
        ),
        AgentStatus(  # the Last Will: the device above becomes stale
            school_id="KZ-1",
            agent_id="a1",
            measured_at=at,
            status=AgentState.OFFLINE,
            reason=StatusReason.CONNECTION_LOST,
            version="1",
            boot_id="0" * 32,
        ),
        ConnectivityReport(
            school_id="KZ-1",
            agent_id="a1",
            measured_at=at,
            interval_s=60.0,
            checks=60,
            passed=57,
            down_no_route_s=0.0,
            down_gateway_s=60.0,
            down_dns_s=0.0,
            down_upstream_s=120.0,
        ),
        OutageReport(
            school_id="KZ-1",
            agent_id="a1",
            measured_at=at,
            ended_at=at.replace(minute=3),
            duration_s=180.0,
            cause=OutageCause.UPSTREAM,
            detail="tcp broker: refused",
        ),
    ]


@pytest.mark.parametrize(
    "measurement",
    [
        "speed",
        "agent",
        "device",
        "device_report",
        "connectivity",
        "outage",
        "collector",
        "collector_rejections",
        "collector_rate_limited",
        "school",
        "registry_import",
        "speed_summary",
        "device_summary",
        "agent_summary",
        "connectivity_summary",
        "outage_summary",
        "collector_summary",
    ],
)
def test_measurement_tables_match_what_influxdb_holds(database: Influx, measurement: str) -> None:
    writer_settings = InfluxSettings(url=database.url, database=database.database)
    writer = V1Writer(writer_settings)
    maker = PointMaker(place_of=lambda _school: Place("Almaty", "Bostandyk"))
    lines = [line for m in _sample_messages() for line in maker.lines(m, 0)]
    counters = Counters()
    counters.reject(RejectReason.INVALID_JSON)
    counters.stored_with_lag([120.0, 480.0])
    counters.over_budget("KZ-1", 3)
    writer.write(
        lines + counters.lines("c1") + over_budget_lines("c1", counters.take_over_budget())
    )
    school = School(
        "KZ-1", "Almaty", "School 1", "Bostandyk", "urban", 43.2, 76.9, 1200, 95,
        frozenset({DeviceKind.PANIC_BUTTON}), True,
    )  # fmt: skip
    import_registry(SchoolRegistry([school]), writer_settings, "schools.csv")
    plan = retention.Plan(database.database, raw_days=90, history_days=0, summary_interval_s=3600)
    first = min(m.measured_at for m in _sample_messages())
    retention.backfill(database.client, plan, first, datetime.now(UTC) + timedelta(hours=1))

    kept = retention.KEPT + tuple(summary.target for summary in retention.SUMMARIES)
    name = f'"history"."{measurement}"' if measurement in kept else f'"{measurement}"'
    _assert_documented(database, name, _documented_measurement(measurement))


def test_the_json_example_is_a_valid_speed_report() -> None:
    section = _section("## MQTT messages")
    example = section[
        section.index("```json") + len("```json") : section.index("```\n", section.index("```json"))
    ]
    report = SpeedReport.model_validate_json(json.dumps(json.loads(example)))
    assert report.meets_threshold is True


def test_every_influxql_example_runs(database: Influx) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    maker = PointMaker()
    writer.write([line for m in _sample_messages() for line in maker.lines(m, 0)])
    blocks = [part.split("```\n", 1)[0] for part in README.split("```sql")[1:]]
    queries = [
        line
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.startswith("--")
    ]
    assert len(blocks) >= 2
    assert len(queries) >= 6
    for query in queries:
        database.client.query(query)  # raises InfluxQueryError if InfluxDB refuses it


def test_every_link_in_every_readme_resolves_to_a_file_and_a_heading() -> None:
    assert readmes.broken_links() == []


def test_the_link_checker_finds_a_broken_file_and_a_broken_heading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "README.md").write_text(
        "# Top\n\n## Where to start\n\n[ok](#where-to-start) [ok](agent/README.md#run-it) "
        "[gone](agent/nothing.py) [no heading](agent/README.md#nowhere) [web](https://x.y/z)\n"
    )
    (tmp_path / "agent" / "README.md").write_text("# Agent\n\n## Run it\n\n[up](../README.md)\n")
    monkeypatch.setattr(readmes, "REPO", tmp_path)
    monkeypatch.setattr(readmes, "FILES", ("README.md", "agent/README.md"))
    assert readmes.broken_links() == [
        "README.md: agent/nothing.py (no such file)",
        "README.md: agent/README.md#nowhere (no such heading)",
    ]


def _documented_state(name: str) -> dict[str, tuple[str, str]]:
    """{key: (tag|field, type)} from a state measurement's table (types may be listed per key)."""
    table = _table_after(f"**`{name}`**", _section("## InfluxDB measurements"))
    keys: dict[str, tuple[str, str]] = {}
    for row in table:
        if row[0].startswith("every field of"):
            every = _documented_state(_names(row[0])[0])
            keys |= {key: value for key, value in every.items() if value[0] == "field"}
            continue
        names = _names(row[0])
        types = [t.strip() for t in row[2].split(",")]
        for number, key in enumerate(names):
            keys[key] = (row[1], types[number] if len(types) == len(names) else types[0])
    return keys


@pytest.mark.parametrize(
    "measurement", ["school_state", "device_state", "school_alert", "school_list"]
)
def test_state_tables_match_what_the_keeper_writes(database: Influx, measurement: str) -> None:
    settings = InfluxSettings(url=database.url, database=database.database)
    maker = PointMaker(place_of=lambda _school: Place("Almaty", "Bostandyk"))
    arrived = time.time_ns()  # the Last Will is stamped on arrival: its devices are stale now
    V1Writer(settings).write([line for m in _sample_messages() for line in maker.lines(m, arrived)])
    school = School(
        "KZ-1", "Almaty", "School 1", "Bostandyk", "urban", 43.2, 76.9, 1200, 95,
        frozenset({DeviceKind.PANIC_BUTTON}), True,
    )  # fmt: skip
    import_registry(SchoolRegistry([school]), settings, "schools.csv")
    with StateKeeper(CollectorSettings(influx=settings)) as keeper:
        keeper.tick()
    name = f'"state"."{measurement}"'
    _assert_documented(database, name, _documented_state(measurement))


def _assert_documented(database: Influx, name: str, documented: dict[str, tuple[str, str]]) -> None:
    """The tag and field keys InfluxDB holds for ``name`` are the README table's."""
    tags = {row["tagKey"] for row in database.rows(f"SHOW TAG KEYS FROM {name}")}
    fields = {
        row["fieldKey"]: row["fieldType"] for row in database.rows(f"SHOW FIELD KEYS FROM {name}")
    }
    assert {k for k, (kind, _) in documented.items() if kind == "tag"} == tags
    assert {k: TYPES[t] for k, (kind, t) in documented.items() if kind == "field"} == fields
