"""Retention and summaries on a real InfluxDB 1.6: policies, continuous queries, backfill."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean

import pytest
from localstack import Mosquitto
from pydantic import ValidationError

from agent.contract import ConnectivityReport, OutageCause, OutageReport
from collector import retention
from collector.fleet import generate, write_direct
from collector.influx.v1 import V1Writer
from collector.line_protocol import encode
from collector.points import ns
from collector.rollout import rollout
from collector.settings import CollectorSettings, InfluxSettings, RetentionSettings
from tests.conftest import start_collector
from tests.support.publishing import SchoolPublisher
from tests.support.services import Influx, collector_cli, collector_process, command_env, wait_for

HOUR = 3600


def _device_line(school: str, device: str, at: datetime, up: int, response_ms: float) -> str:
    tags = {"school_id": school, "agent_id": "a1", "device_id": device, "kind": "panic_button",
            "region": "Almaty", "result": "ok" if up else "timeout"}  # fmt: skip
    fields = {"state": "up" if up else "down", "state_code": 1 if up else 3, "up": up,
              "response_ms": response_ms if up else None}  # fmt: skip
    return encode("device", tags, fields, ns(at))


def test_apply_sets_both_policies_and_a_continuous_query_per_summary(database: Influx) -> None:
    done = collector_cli(
        database, "retention", "apply", SCHOOL_COLLECTOR_RETENTION__HISTORY_DAYS="400"
    )
    assert done.returncode == 0, done.stderr
    policies = {p.name: p for p in retention.policies(database.client, database.database)}
    assert policies["autogen"].duration == "2160h0m0s"  # 90 days
    assert policies["autogen"].shard_duration == "24h0m0s"
    assert policies["autogen"].default
    assert policies["history"].duration == "9600h0m0s"  # 400 days
    assert not policies["history"].default

    def queries() -> dict[str, str]:
        return {row["name"]: row["query"]
                for s in database.client.query("SHOW CONTINUOUS QUERIES")
                if s.name == database.database for row in s.rows()}  # fmt: skip

    first = queries()
    assert set(first) == {f"{s.target}_cq" for s in retention.SUMMARIES}
    assert all("GROUP BY time(1h)" in q for q in first.values())
    again = collector_cli(
        database, "retention", "apply", SCHOOL_COLLECTOR_RETENTION__SUMMARY_INTERVAL_S="600"
    )
    assert again.returncode == 0, again.stderr
    second = queries()
    assert set(second) == set(first)  # replaced, not added
    assert all("GROUP BY time(10m)" in q for q in second.values())
    shown = collector_cli(database, "retention", "show")
    assert "history" in shown.stdout
    assert "device_summary_cq" in shown.stdout


def test_raw_points_must_outlive_what_reads_them() -> None:
    with pytest.raises(ValidationError, match=r"retention\.raw_days"):
        CollectorSettings(retention=RetentionSettings(raw_days=30))  # max_past_days is 60
    CollectorSettings(retention=RetentionSettings(raw_days=60))


def test_the_continuous_queries_summarise_each_interval(database: Influx) -> None:
    plan = retention.Plan(database.database, raw_days=90, history_days=0, summary_interval_s=2)
    retention.apply(database.client, plan)
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    sent: list[tuple[datetime, int, float]] = []
    deadline = time.monotonic() + 9
    number = 0
    while time.monotonic() < deadline:  # ~36 points over four and a half intervals
        at = datetime.now(UTC)
        up = 0 if number % 3 == 0 else 1
        sent.append((at, up, 10.0 + number))
        writer.write([_device_line("S-CQ", "pb-1", at, up, 10.0 + number)])
        number += 1
        time.sleep(0.25)
    step = 2 * retention.NS
    intervals = sorted({ns(at) // step * step for at, _, _ in sent})
    whole = intervals[1:-1]  # the first and last were written only in part
    query = 'SELECT * FROM "history"."device_summary" WHERE "school_id" = \'S-CQ\''
    wait_for(
        lambda: len(database.rows(query)) >= len(intervals) - 1 or None,
        timeout=20,
        what="the continuous query's summaries",
    )
    time.sleep(2.5)  # each interval is summarised twice; the second run has all its points
    summary = database.rows(query)
    by_start = {ns(datetime.fromisoformat(row["time"])): row for row in summary}
    for start in whole:
        inside = [(up, ms) for at, up, ms in sent if start <= ns(at) < start + step]
        row = by_start[start]
        assert row["reports"] == len(inside)
        assert row["up_ratio"] == pytest.approx(mean(up for up, _ in inside))
        assert row["worst_state_code"] == (3 if any(up == 0 for up, _ in inside) else 1)
        assert row["response_ms"] == pytest.approx(mean(ms for up, ms in inside if up))
        assert row["kind"] == "panic_button"
        assert row["region"] == "Almaty"


def test_backfill_summarises_old_points_once(database: Influx) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    retention.apply(database.client, retention.Plan(database.database, 90, 0, HOUR))
    start = (datetime.now(UTC) - timedelta(days=20)).replace(hour=8, minute=0, second=0,
                                                             microsecond=0)  # fmt: skip
    lines = [
        _device_line("S-OLD", "pb-1", start + timedelta(minutes=5 * i), int(i % 4 != 0), 20.0 + i)
        for i in range(36)  # 08:00 to 10:55, every 5 minutes
    ]
    writer.write(lines)
    for _ in range(2):  # twice: the same points, not twice as many
        done = collector_cli(
            database, "retention", "backfill",
            "--since", (start + timedelta(minutes=30)).isoformat(),
            "--until", (start + timedelta(hours=2, minutes=10)).isoformat(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "summary points written" in done.stdout
    rows = database.rows('SELECT * FROM "history"."device_summary"')
    # whole hours: 08:00 to 11:00, however the range cuts them
    assert [datetime.fromisoformat(row["time"]) for row in rows] == [
        start, start + timedelta(hours=1), start + timedelta(hours=2)
    ]  # fmt: skip
    for hour, row in enumerate(rows):
        values = range(12 * hour, 12 * hour + 12)
        assert row["reports"] == 12
        assert row["up_ratio"] == pytest.approx(9 / 12)
        assert row["response_ms"] == pytest.approx(mean(20.0 + i for i in values if i % 4))


def test_the_registry_and_rollout_live_in_history(database: Influx, tmp_path: Path) -> None:
    fleet = generate(60, now=datetime.now(UTC), seed=3, tests_per_day=1.0)
    registry_csv = tmp_path / "registry.csv"
    registry_csv.write_text(fleet.registry_csv())
    done = collector_cli(database, "registry", "import", str(registry_csv))
    assert done.returncode == 0, done.stderr
    assert database.rows('SELECT count("name") FROM "history"."school"')[0]["count"] == 60
    assert database.rows('SELECT count("name") FROM "autogen"."school"') == []


def test_a_school_silent_longer_than_raw_points_are_kept_is_dropped_off(
    database: Influx,
) -> None:
    settings = InfluxSettings(url=database.url, database=database.database)
    now = datetime.now(UTC).replace(microsecond=0)
    fleet = generate(50, now=now, seed=5, tests_per_day=1.0)
    write_direct(fleet, V1Writer(settings), settings, registry_at=now - timedelta(days=200))
    quiet = fleet.records[0].school.school_id
    long_ago = now - timedelta(days=150)
    V1Writer(settings).write([encode(
        "speed", {"school_id": quiet, "agent_id": "a1", "result": "success"},
        {"result_code": 0, "download_mbps": 31.0}, ns(long_ago),
    )])  # fmt: skip
    retention.backfill(database.client, retention.Plan(database.database, 90, 0, HOUR),
                       long_ago - timedelta(hours=1), long_ago + timedelta(hours=1))  # fmt: skip
    # What InfluxDB does once the raw points are older than raw_days (default policy 90 days):
    database.client.query(f'DELETE FROM "speed" WHERE "school_id" = \'{quiet}\'')

    rows = rollout(database.client, now)
    assert rows is not None
    before = {r.metric: r.schools for r in rows if r.region == "national"}
    database.client.query('DROP MEASUREMENT "speed_summary"')
    after = rollout(database.client, now)
    assert after is not None
    without = {r.metric: r.schools for r in after if r.region == "national"}
    assert before["dropped_off"] == without["dropped_off"] + 1
    assert before["never_reported"] == without["never_reported"] - 1


def test_points_stored_late_are_summarised_by_the_collector(
    broker: Mosquitto, collector_env: dict[str, str], database: Influx, topic_root: str,
    school_id: str, tmp_path: Path,
) -> None:  # fmt: skip
    env = command_env(**collector_env) | {"SCHOOL_COLLECTOR_RETENTION__SUMMARY_INTERVAL_S": "60"}
    collector = start_collector(collector_process(tmp_path, env))
    try:
        with SchoolPublisher(broker.port, topic_root, school_id) as school:  # an hour ago
            reports = [school.publish_speed(18.0 + 4 * i) for i in range(3)]
        rows = wait_for(
            lambda: database.rows(
                f'SELECT * FROM "history"."speed_summary" WHERE "school_id" = \'{school_id}\''
            ),
            timeout=30,
            what="the late speed reports' summary",
        )
    finally:
        collector.stop()
    assert sum(row["tests"] for row in rows) == 3
    weighted = sum(row["tests"] * row["download_mbps"] for row in rows) / 3
    assert weighted == pytest.approx(mean(r.download_mbps or 0 for r in reports))
    assert "late school-interval" in collector.log_file.read_text()


@pytest.mark.parametrize("schools", [3, retention.WHOLE_INTERVAL_SCHOOLS + 10])
def test_late_intervals_are_summarised_per_school_or_whole(database: Influx, schools: int) -> None:
    settings = InfluxSettings(url=database.url, database=database.database)
    plan = retention.Plan(database.database, 90, 0, HOUR)
    hour = (datetime.now(UTC) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
    at = hour + timedelta(minutes=20)
    ids = [f"S-LATE-{n:03d}" for n in range(schools)]
    V1Writer(settings).write([_device_line(sid, "pb-1", at, 1, 5.0) for sid in ids])
    late = retention.LateHours(plan, database.client)
    for sid in ids:
        late.note(sid, ns(at), time.time_ns())
    late.note("S-ON-TIME", ns(datetime.now(UTC)), time.time_ns())  # its hour's query is to come

    assert late.once() == schools
    rows = database.rows('SELECT * FROM "history"."device_summary"')
    assert sorted(row["school_id"] for row in rows) == ids
    assert {datetime.fromisoformat(row["time"]) for row in rows} == {hour}
    assert late.once() == 0  # nothing noted twice


def test_a_named_raw_policy_is_the_one_limited_and_summarised(database: Influx) -> None:
    database.client.query(f'CREATE RETENTION POLICY "raw" ON "{database.database}" DURATION INF '
                          "REPLICATION 1")  # fmt: skip
    done = collector_cli(
        database, "retention", "apply", SCHOOL_COLLECTOR_INFLUX__RETENTION_POLICY="raw"
    )
    assert done.returncode == 0, done.stderr
    policies = {p.name: p for p in retention.policies(database.client, database.database)}
    assert policies["raw"].duration == "2160h0m0s"
    assert policies["autogen"].duration == "0s"  # left alone, and still the default
    assert policies["autogen"].default
    assert f'FROM "{database.database}"."raw"."device" GROUP BY' in done.stdout


def test_rollout_at_a_moment_older_than_raw_points_says_where_to_look(database: Influx) -> None:
    long_ago = (datetime.now(UTC) - timedelta(days=100)).isoformat()
    done = collector_cli(database, "rollout", "--at", long_ago)
    assert "retention.raw_days" in done.stderr
    assert '"history"."rollout"' in done.stderr
    recent = collector_cli(
        database, "rollout", "--at", (datetime.now(UTC) - timedelta(days=30)).isoformat()
    )
    assert "retention.raw_days" not in recent.stderr


def test_only_what_was_complete_long_ago_is_marked_stored_late(
    broker: Mosquitto, collector_env: dict[str, str], database: Influx, topic_root: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """An hour's connectivity counts are dated at the hour's start and sent at its end:
    on time, not late. An outage that ended hours ago, sent now, is late from its end."""
    now = datetime.now(UTC)
    hour = now - timedelta(seconds=3600 - 5)  # the period that just ended
    ended = now - timedelta(hours=2)
    collector = start_collector(collector_process(tmp_path, command_env(**collector_env)))
    try:
        with SchoolPublisher(broker.port, topic_root, "KZ-ON-TIME") as school:
            counts = ConnectivityReport(
                school_id=school.school_id, agent_id=school.agent_id, measured_at=hour,
                interval_s=60.0, period_s=3600.0, checks=60, passed=60,
            )  # fmt: skip
            school.publish_raw("connectivity", counts.model_dump_json().encode())
        with SchoolPublisher(broker.port, topic_root, "KZ-AFTER-OUTAGE") as school:
            outage = OutageReport(
                school_id=school.school_id, agent_id=school.agent_id,
                measured_at=ended - timedelta(minutes=40), ended_at=ended, duration_s=2400.0,
                cause=OutageCause.UPSTREAM,
            )  # fmt: skip
            school.publish_raw("outage", outage.model_dump_json().encode())
        wait_for(lambda: database.count("outage") + database.count("connectivity") == 2,
                 what="both stored")  # fmt: skip
    finally:
        collector.stop()
    marks = database.rows('SELECT "since_ns", "school_id" FROM "stored_late"')
    assert [(m["school_id"], m["since_ns"]) for m in marks] == [("KZ-AFTER-OUTAGE", ns(ended))]
