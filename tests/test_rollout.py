"""Rollout percentages over a simulated national fleet equal the simulator's own truth."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from localstack import Process

from agent.contract import OutageCause
from collector import rollup as rollup_module
from collector.fleet import (
    Fleet,
    generate,
    ground_truth,
    messages,
    school_hours_availability,
    write_direct,
)
from collector.influx import make_history_writer, make_writer
from collector.influx.query import InfluxQL
from collector.influx.v1 import V1Writer
from collector.registry import School, SchoolRegistry
from collector.rollout import (
    CHASE,
    DEFINITIONS,
    NATIONAL,
    ROLLOUT_SCHOOL,
    Facts,
    Row,
    rollout,
    rollout_lines,
    school_metrics,
)
from collector.rollout_rules import Rules
from collector.rollup import Rollup
from collector.settings import CollectorSettings, InfluxSettings
from tests.conftest import start_collector
from tests.support.services import Influx, collector_process, command_env, wait_for


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return generate(7400, now=datetime.now(UTC).replace(microsecond=0), seed=7, tests_per_day=0.2)


@pytest.fixture
def stored(fleet: Fleet, database: Influx) -> Influx:
    settings = InfluxSettings(url=database.url, database=database.database)
    write_direct(fleet, V1Writer(settings), settings, registry_at=fleet.now - timedelta(hours=1))
    return database


def test_the_simulated_registry_looks_like_the_country(fleet: Fleet) -> None:
    registry: SchoolRegistry = fleet.registry
    assert len(registry) == 7400
    assert len(registry.regions()) == 20  # 17 regions and 3 cities
    truth = ground_truth(fleet, fleet.now)
    national = {metric: truth[metric, NATIONAL] for metric in DEFINITIONS}
    assert national["turnstile_installed"] == pytest.approx(98, abs=0.05)
    assert national["security_contract"] == pytest.approx(97, abs=0.05)
    assert national["panic_button_installed"] == pytest.approx(96, abs=0.05)
    assert national["police_link_installed"] == pytest.approx(81, abs=0.05)
    monitored = national["live"] + national["at_risk"] + national["dropped_off"]
    assert monitored == pytest.approx(70, abs=0.05)
    assert 0 < national["meets_standard"] < monitored  # rural 4G and satellite fall short
    assert SchoolRegistry.parse(fleet.registry_csv()).regions() == registry.regions()


def test_the_simulated_links_fail_as_satellite_and_4g_do(fleet: Fleet) -> None:
    """Satellite and 4G schools lose their link more often than fibre: availability in
    school hours, by link, and a share meeting the 99 % target between none and all."""
    by_link: dict[str, list[float]] = {}
    for record in fleet.records:
        available = school_hours_availability(record, fleet.now, Rules())
        if available is not None:
            by_link.setdefault(record.link, []).append(available)
    mean = {link: sum(found) / len(found) for link, found in by_link.items()}
    assert mean["satellite"] < mean["4g"] < mean["fibre"]
    truth = ground_truth(fleet, fleet.now)
    assert 0 < truth["school_hours_available", NATIONAL] < truth["live", NATIONAL]
    assert {hour.cause for r in fleet.records for hour in r.hours} == {None, *OutageCause}


def _cli_rollout(database: Influx, *args: str) -> list[dict[str, Any]]:
    return _cli_rollout_noted(database, *args)[0]


def _cli_rollout_noted(database: Influx, *args: str) -> tuple[list[dict[str, Any]], str]:
    """The rows, and what the command said on stderr."""
    env = command_env(
        SCHOOL_COLLECTOR_INFLUX__URL=database.url,
        SCHOOL_COLLECTOR_INFLUX__DATABASE=database.database,
    )
    result = subprocess.run(
        [sys.executable, "-m", "collector", "rollout", "--format", "json", *args],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    return list(json.loads(result.stdout)), result.stderr


def test_every_percentage_from_the_cli_equals_the_ground_truth(
    fleet: Fleet, stored: Influx
) -> None:
    truth = ground_truth(fleet, fleet.now)
    rows = _cli_rollout(stored, "--at", fleet.now.isoformat())
    assert len(rows) == len(DEFINITIONS) * 21  # national and 20 regions
    for row in rows:
        expected = truth[row["metric"], row["region"]]
        assert row["percent"] == pytest.approx(expected, abs=0.1), (row, expected)
    regional = _cli_rollout(stored, "--at", fleet.now.isoformat(), "--region", "Turkistan")
    assert {row["region"] for row in regional} == {NATIONAL, "Turkistan"}


def test_without_at_the_cli_shows_the_collectors_latest_figures(
    fleet: Fleet, stored: Influx
) -> None:
    settings = InfluxSettings(url=stored.url, database=stored.database)
    computed, said = _cli_rollout_noted(stored)  # no collector has written any yet
    assert "computing it now from raw points" in said
    truth = ground_truth(fleet, datetime.now(UTC))
    for row in computed:
        assert row["percent"] == pytest.approx(truth[row["metric"], row["region"]], abs=0.1)
    rows = rollout(InfluxQL(settings), fleet.now)
    assert rows is not None
    history = make_history_writer(settings)
    stale = datetime.now(UTC) - timedelta(minutes=11)  # older than 2 x rollout.interval_s
    history.write(rollout_lines(rows[:1], stale))
    ahead = datetime.now(UTC) + timedelta(minutes=30)  # a collector whose clock runs fast
    history.write(rollout_lines(rows[:1], ahead))
    assert "computing it now" in _cli_rollout_noted(stored)[1]
    written = datetime.now(UTC) - timedelta(minutes=1)
    doctored = [  # tells them apart
        Row(
            r.metric,
            r.region,
            r.schools // 2,
            r.total,
            None if r.mean is None else round(r.mean / 2, 2),
        )
        for r in rows
    ]
    history.write(rollout_lines(doctored, written))
    shown, said = _cli_rollout_noted(stored)
    assert f"as the collector computed it at {written:%Y-%m-%d %H:%M:%S}" in said
    assert shown == [
        {"metric": r.metric, "region": r.region, "schools": r.schools, "total": r.total,
         "percent": round(r.percent, 2)}
        for r in doctored
    ]  # fmt: skip
    regional, _ = _cli_rollout_noted(stored, "--region", "Turkistan")
    assert {row["region"] for row in regional} == {NATIONAL, "Turkistan"}


def test_the_rollout_measurement_agrees(fleet: Fleet, stored: Influx) -> None:
    client = InfluxQL(InfluxSettings(url=stored.url, database=stored.database))
    rows = rollout(client, fleet.now)
    assert rows is not None
    make_history_writer(InfluxSettings(url=stored.url, database=stored.database)).write(
        rollout_lines(rows, fleet.now)
    )
    truth = ground_truth(fleet, fleet.now)
    found = stored.client.query(
        'SELECT last("percent") FROM "history"."rollout" GROUP BY "metric", "level", "region"'
    )
    assert len(found) == len(rows)
    for series in found:
        region = series.tags["region"] or NATIONAL
        assert series.values[0][1] == pytest.approx(truth[series.tags["metric"], region], abs=0.1)


def test_before_any_registry_there_is_no_percentage(database: Influx) -> None:
    client = InfluxQL(InfluxSettings(url=database.url, database=database.database))
    assert rollout(client, datetime.now(UTC)) is None


def test_the_collector_writes_the_rollout_every_interval(
    fleet: Fleet, stored: Influx, collector_env: dict[str, str], tmp_path: Path
) -> None:
    env = command_env(**collector_env) | {
        "SCHOOL_COLLECTOR_ROLLOUT__INTERVAL_S": "10",
        "SCHOOL_COLLECTOR_STATE__INTERVAL_S": "5",  # its first tick: within 5 s
    }
    collector = start_collector(collector_process(tmp_path, env))
    try:
        found = wait_for(
            lambda: stored.client.query(
                'SELECT last("percent") FROM "history"."rollout" WHERE "level" = \'national\' '
                'GROUP BY "metric"',
                epoch="ns",
            ),
            timeout=60,
            what="the collector's first rollup",
        )
    finally:
        collector.stop()
    assert {series.tags["metric"] for series in found} == set(DEFINITIONS)
    at = datetime.fromtimestamp(found[0].values[0][0] / 1e9, UTC)
    truth = ground_truth(fleet, at)  # the truth at the rollup's own moment
    for series in found:
        assert series.values[0][1] == pytest.approx(truth[series.tags["metric"], NATIONAL], abs=0.1)
    listed = stored.client.query(
        f'SELECT last("name") AS "name", last("last_report_ms") AS "last" FROM "{ROLLOUT_SCHOOL}" '
        'GROUP BY "metric", "school_id"'
    )
    shown = {(s.tags["metric"], s.tags["school_id"]): s.values[0][2] for s in listed}
    assert shown == _to_chase(fleet, at)
    assert {metric for metric, _ in shown} == set(CHASE)


def _to_chase(fleet: Fleet, at: datetime) -> dict[tuple[str, str], int | None]:
    """(metric, school) -> its last report (ms) for the schools at risk, dropped off or silent."""
    found: dict[tuple[str, str], int | None] = {}
    for record in fleet.records:
        last = record.last_report
        if last is None:
            metric = "never_reported"
        elif at - last > timedelta(days=28):
            metric = "dropped_off"
        elif at - last > timedelta(days=21):
            metric = "at_risk"
        else:
            continue
        found[metric, record.school.school_id] = (
            None if last is None else int(last.timestamp() * 1000)
        )
    return found


def test_a_rollup_waits_while_the_collector_drains_a_backlog(
    fleet: Fleet, stored: Influx, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rollup_module, "DRAIN_POLL_S", 0.05)
    settings = CollectorSettings(
        influx=InfluxSettings(url=stored.url, database=stored.database),
        rollout={"interval_s": 60},
    )
    draining = threading.Event()
    draining.set()
    influx = settings.influx
    job = Rollup(settings, make_history_writer(influx), make_writer(influx), draining.is_set)
    count = 'SELECT count("percent") FROM "history"."rollout"'
    job.start()
    try:
        time.sleep(1.5)
        assert stored.client.query(count) == []  # postponed while the backlog drains
        draining.clear()
        wait_for(lambda: stored.client.query(count), timeout=30, what="the postponed rollup")
    finally:
        job.stop()


def test_the_simulator_publishes_through_the_broker_and_collector(
    collector: Process, collector_env: dict[str, str], database: Influx, tmp_path: Path
) -> None:
    registry_csv = tmp_path / "schools.csv"
    result = subprocess.run(
        [sys.executable, "-m", "collector", "simulate", "--schools", "60", "--seed", "3",
         "--tests-per-day", "0.5", "--via", "mqtt", "--registry-out", str(registry_csv)],
        capture_output=True, text=True, env=command_env(**collector_env), timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = generate(60, now=datetime.now(UTC).replace(microsecond=0), seed=3, tests_per_day=0.5)
    speeds = sum(len(record.downloads) for record in expected.records)
    wait_for(lambda: database.count("speed") >= speeds, timeout=120, what=f"{speeds} points")
    assert database.count("speed") == speeds
    assert len(SchoolRegistry.load(registry_csv)) == 60
    assert f"{sum(1 for _ in messages(expected))} messages published" in result.stdout


@pytest.mark.parametrize(
    ("students", "standard"),
    [(None, 20.0), (300, 20.0), (400, 20.0), (401, 20.05), (1000, 50.0)],
)
def test_the_per_student_standard_binds_only_above_400_students(
    students: int | None, standard: float
) -> None:
    assert Rules().standard_mbps(students) == pytest.approx(standard)


@pytest.mark.parametrize(
    ("students", "mean", "expected"),
    [
        (401, 20.04, {"meets_standard", "giga_moderate"}),  # 20 Mbps met, 20.05 not
        (401, 20.05, {"meets_standard", "meets_per_student_standard", "giga_good"}),
        (400, 20.0, {"meets_standard", "meets_per_student_standard", "giga_good"}),
        (None, 19.0, {"giga_moderate"}),
        (1000, 0.5, {"giga_bad"}),
        (1000, None, set()),  # no successful test in the window: no category
    ],
)
def test_giga_categories_and_the_per_student_standard_on_their_edges(
    students: int | None, mean: float | None, expected: set[str]
) -> None:
    school = School("KZ-1", "Almaty", "School 1", students=students)
    facts = Facts()
    if mean is not None:
        facts.mean_download["KZ-1"] = mean
    speed = {"meets_standard", "meets_per_student_standard", "giga_good", "giga_moderate",
             "giga_bad"}  # fmt: skip
    assert school_metrics(school, facts, datetime.now(UTC), Rules()) & speed == expected
