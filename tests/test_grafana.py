"""Every dashboard panel's and alert rule's query, run against InfluxDB holding a simulated fleet.

Grafana cannot run here, so its part is played by substituting its macros
(``$timeFilter``, ``$__interval``, the template variables) the way Grafana
does; each query must then execute and return what the fleet's own records
say it should.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from agent.contract import DeviceKind, DeviceState
from collector.fleet import Fleet, SchoolRecord, generate, ground_truth, write_direct
from collector.influx import make_history_writer
from collector.influx.query import InfluxQL, Series
from collector.influx.v1 import V1Writer
from collector.line_protocol import encode
from collector.points import ns
from collector.rollout import DEFINITIONS, NATIONAL, rollout, rollout_lines
from collector.settings import InfluxSettings
from grafana.build import render
from tests.support.services import REPO, Influx

GRAFANA = REPO / "grafana"
NOW = datetime.now(UTC).replace(microsecond=0)
REGION = "Almaty"
INTERVAL = "1h"


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return generate(800, now=NOW, seed=11, tests_per_day=0.3)


@pytest.fixture
def stored(fleet: Fleet, database: Influx) -> Iterator[InfluxQL]:
    settings = InfluxSettings(url=database.url, database=database.database)
    writer = V1Writer(settings)
    write_direct(fleet, writer, settings, registry_at=NOW - timedelta(days=2))
    client = InfluxQL(settings)
    history = make_history_writer(settings)
    for at in (NOW - timedelta(days=1), NOW):
        rows = rollout(client, at)
        assert rows is not None
        history.write(rollout_lines(rows, at))
    tags = {"collector_id": "c1"}
    writer.write(
        [
            encode("collector", tags, {"received": 100, "write_retries": 0,
                   "device_report_gaps": 0, "agent_restarts": 1}, ns(NOW - timedelta(hours=3))),
            encode("collector", tags, {"received": 700, "write_retries": 2,
                   "device_report_gaps": 0, "agent_restarts": 1, "lag_p50_ms": 310.0,
                   "lag_p99_ms": 900.0}, ns(NOW - timedelta(hours=1))),
            encode("collector", tags, {"received": 760, "lag_p50_ms": 280.0, "lag_p99_ms": 640.0},
                   ns(datetime.now(UTC) - timedelta(minutes=1))),  # in the lag alert's window
            encode("collector_rejections", tags | {"reason": "invalid_json"}, {"count": 1},
                   ns(NOW - timedelta(hours=3))),
            encode("collector_rejections", tags | {"reason": "invalid_json"}, {"count": 4},
                   ns(NOW - timedelta(hours=1))),
            encode("collector_rate_limited", tags | {"school_id": "KZ-FLOOD"}, {"messages": 900},
                   ns(datetime.now(UTC) - timedelta(minutes=2))),  # in the flood alert's window
        ]
    )  # fmt: skip
    yield client
    client.close()


def _school(fleet: Fleet) -> SchoolRecord:
    """A school of REGION with devices, tests, and a failed one: the drill-down's choice."""
    return next(
        r for r in fleet.records
        if r.school.region == REGION and r.device_states and len(r.downloads) >= 3
        and any(d is None for t, d in r.downloads if t > NOW - timedelta(days=30))
    )  # fmt: skip


def substitute(query: str, school: str, span: str = "30d") -> str:
    """Grafana's macros and variables, as Grafana expands them for InfluxQL."""
    return (
        query.replace("$timeFilter", f"time > now() - {span}")
        .replace("$__interval", INTERVAL)
        .replace("/^$region$/", f"/^{re.escape(REGION)}$/")
        .replace("/^$school$/", f"/^{re.escape(school)}$/")
    )


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")}


def _panel(board: str, title: str) -> dict[str, Any]:
    return next(p for p in _dashboards()[board]["panels"] if p["title"] == title)


def _run(client: InfluxQL, query: str, school: str, span: str = "30d") -> list[Series]:
    """``span``: the dashboard's time range, or an alert rule's relativeTimeRange."""
    return client.query(substitute(query, school, span))


def _rows(series: list[Series]) -> list[dict[str, Any]]:
    return [row for s in series for row in s.rows()]


def test_the_committed_dashboards_are_what_the_code_builds() -> None:
    built = render()
    assert sorted(built) == sorted(_dashboards())
    for name, text in built.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, f"run: python {name}"


def _every_query() -> list[tuple[str, str, str]]:
    """(where, query, time span) of every panel, variable and alert query."""
    found = []
    for name, board in _dashboards().items():
        for panel in board["panels"]:
            found += [(f"{name}: {panel['title']}", t["query"], "30d") for t in panel["targets"]]
        found += [(f"{name}: ${v['name']}", v["query"], "30d") for v in board["templating"]["list"]]
    rules = yaml.safe_load(
        (GRAFANA / "provisioning" / "alerting" / "school-monitor.yaml").read_text()
    )
    for group in rules["groups"]:
        for rule in group["rules"]:
            found += [
                (f"alert {rule['uid']}: {item['refId']}", item["model"]["query"],
                 f"{item['relativeTimeRange']['from']}s")
                for item in rule["data"]
                if item["datasourceUid"] == "school-monitor-influxdb"
            ]  # fmt: skip
    return found


@pytest.mark.parametrize(
    ("where", "query", "span"), _every_query(), ids=[w for w, _, _ in _every_query()]
)
def test_every_query_runs_and_returns_data(
    fleet: Fleet, stored: InfluxQL, where: str, query: str, span: str
) -> None:
    assert _rows(_run(stored, query, _school(fleet).school.school_id, span)), where


def test_the_national_stats_show_the_true_percentages(fleet: Fleet, stored: InfluxQL) -> None:
    truth = ground_truth(fleet, NOW)
    for panel in _dashboards()["national-overview.json"]["panels"]:
        if panel["type"] != "stat":
            continue
        metric = re.search(r"\"metric\" = '(\w+)'", panel["targets"][0]["query"])
        assert metric, panel["title"]
        values = [row["last"] for row in _rows(_run(stored, panel["targets"][0]["query"], ""))]
        assert values[-1] == pytest.approx(truth[metric[1], NATIONAL], abs=0.1), panel["title"]


def test_the_region_table_shows_every_region_and_metric(fleet: Fleet, stored: InfluxQL) -> None:
    truth = ground_truth(fleet, NOW)
    query = _panel("national-overview.json", "By region")["targets"][0]["query"]
    series = _run(stored, query, "")
    cells = {(s.tags["region"], s.tags["metric"]): s.rows()[0]["percent"] for s in series}
    regions = {record.school.region for record in fleet.records}
    assert set(cells) == {(region, metric) for region in regions for metric in DEFINITIONS}
    for (region, metric), percent in cells.items():
        assert percent == pytest.approx(truth[metric, region], abs=0.1)


def test_the_school_panels_show_that_school(fleet: Fleet, stored: InfluxQL) -> None:
    record = _school(fleet)
    sid = record.school.school_id
    history = _panel("region-and-school.json",
                     "$school: download and upload against the 20 Mbps standard")  # fmt: skip
    points = _rows(_run(stored, history["targets"][0]["query"], sid))
    window = NOW - timedelta(days=30)
    expected = sorted(d for t, d in record.downloads if d is not None and t > window)
    assert sorted(p["download_mbps"] for p in points) == expected
    devices = _run(stored, _panel("region-and-school.json", "$school: devices")["targets"][0]
                   ["query"], sid)  # fmt: skip
    shown = {s.tags["device_id"]: s.rows()[0]["state"] for s in devices}
    assert shown == {d: state.value for d, (_, state) in record.device_states.items()}
    schools = _run(stored, _dashboards()["region-and-school.json"]["templating"]["list"][1]
                   ["query"], sid)  # fmt: skip
    listed = {row["value"] for row in _rows(schools)}
    assert listed == {r.school.school_id for r in fleet.records if r.school.region == REGION}


def test_the_safety_table_lists_every_device_not_up(fleet: Fleet, stored: InfluxQL) -> None:
    query = _panel("safety-devices.json", "Devices down, late or stale now (longest first)")
    series = _run(stored, query["targets"][0]["query"], "")
    shown = {(s.tags["school_id"], s.tags["device_id"]): s.rows()[0]["state"] for s in series}
    expected = {
        (r.school.school_id, device_id): state.value
        for r in fleet.records
        for device_id, (_, state) in r.device_states.items()
        if state is not DeviceState.UP
    }
    assert shown == expected
    assert expected  # the fleet has failures


def test_the_fleet_panel_lists_the_agents_offline(fleet: Fleet, stored: InfluxQL) -> None:
    panel = _panel("fleet-health.json", "Agents offline now (last status in 90 days)")
    series = _run(stored, panel["targets"][0]["query"], "")
    shown = {s.tags["school_id"] for s in series}
    assert shown == {r.school.school_id for r in fleet.records if r.agent_lost}
    assert shown


def _alert(uid: str) -> dict[str, Any]:
    rules = yaml.safe_load(
        (GRAFANA / "provisioning" / "alerting" / "school-monitor.yaml").read_text()
    )
    return next(r for g in rules["groups"] for r in g["rules"] if r["uid"] == uid)


def _alert_values(client: InfluxQL, uid: str, ref: str) -> dict[str, tuple[dict[str, str], float]]:
    """{series key: (tags, last value)} of one query of an alert rule."""
    item = next(d for d in _alert(uid)["data"] if d["refId"] == ref)
    series = _run(client, item["model"]["query"], "", f"{item['relativeTimeRange']['from']}s")
    return {"/".join(sorted(s.tags.values())): (s.tags, float(s.values[-1][1])) for s in series}


def test_the_below_standard_alert_fires_for_three_slow_tests_in_a_row(
    fleet: Fleet, stored: InfluxQL
) -> None:
    best = _alert_values(stored, "school-below-standard", "A")
    count = _alert_values(stored, "school-below-standard", "B")
    firing = {tags["school_id"] for key, (tags, v) in best.items() if v < 20 and count[key][1] >= 3}
    expected = set()
    window = NOW - timedelta(days=30)
    for record in fleet.records:
        good = sorted((t, d) for t, d in record.downloads if d is not None and t > window)
        if len(good) >= 3 and all(d < 20 for _, d in good[-3:]):
            expected.add(record.school.school_id)
    assert firing == expected
    assert expected


def test_the_panic_button_alert_fires_for_buttons_down(fleet: Fleet, stored: InfluxQL) -> None:
    codes = _alert_values(stored, "panic-button-down", "A")
    firing = {(t["school_id"], t["device_id"]) for t, v in codes.values() if 2.5 < v < 3.5}
    expected = {
        (r.school.school_id, device_id)
        for r in fleet.records
        for device_id, (kind, state) in r.device_states.items()
        if kind is DeviceKind.PANIC_BUTTON and state is DeviceState.DOWN
    }
    assert firing == expected
    assert expected


def test_the_agent_offline_alert_fires_for_lost_agents(fleet: Fleet, stored: InfluxQL) -> None:
    online = _alert_values(stored, "agent-offline", "A")
    firing = {tags["school_id"] for tags, v in online.values() if v < 1}
    assert firing == {r.school.school_id for r in fleet.records if r.agent_lost}


def test_the_lag_alert_fires_for_a_collector_falling_behind(
    stored: InfluxQL, database: Influx
) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    moment = datetime.now(UTC) - timedelta(seconds=30)
    writer.write(
        [
            encode("collector", {"collector_id": cid}, {"received": 1, "lag_p99_ms": lag}, ns(at))
            for cid, lag, at in (
                ("behind", 95_000.0, moment),
                ("keeping-up", 700.0, moment),
                ("was-behind", 300_000.0, moment - timedelta(minutes=20)),  # before the window
            )
        ]
    )
    lag = _alert_values(stored, "collector-lagging", "A")
    firing = {tags["collector_id"] for tags, v in lag.values() if v > 60_000}
    assert firing == {"behind"}
    assert "keeping-up" in {tags["collector_id"] for tags, _ in lag.values()}


def test_the_flood_alert_names_the_school_over_its_budget(
    stored: InfluxQL, database: Influx
) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    writer.write(
        [
            encode("collector_rate_limited", {"collector_id": "c1", "school_id": "KZ-EARLIER"},
                   {"messages": 5000}, ns(datetime.now(UTC) - timedelta(minutes=40))),
        ]
    )  # fmt: skip
    over = _alert_values(stored, "school-flooding", "A")
    firing = {tags["school_id"] for tags, v in over.values() if v > 0}
    assert firing == {"KZ-FLOOD"}  # the flood 40 minutes ago has stopped
    table = _rows(_run(stored, _panel("pipeline-health.json",
                  "Schools flooding now (rejected in the last 15 minutes)")["targets"][0]["query"],
                  ""))  # fmt: skip
    assert [(row["school_id"], row["rejected"]) for row in table] == [("KZ-FLOOD", 900)]
