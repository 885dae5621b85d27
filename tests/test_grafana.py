"""Every dashboard panel's and alert rule's query, run against InfluxDB holding a simulated fleet.

Grafana cannot run here, so its part is played by substituting its macros
(``$timeFilter``, ``$__interval``, the template variables) the way Grafana
does; each query must then execute and return what the fleet's own records
say it should.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from agent.contract import DeviceKind, DeviceState
from collector.alert_routing import load_teams, provisioning
from collector.current_state import CurrentState, DeviceFacts
from collector.fleet import Fleet, SchoolRecord, generate, ground_truth, write_direct
from collector.influx import make_history_writer
from collector.influx.query import InfluxQL, Series
from collector.influx.v1 import V1Writer
from collector.line_protocol import FieldValue, encode
from collector.points import ns
from collector.rollout import DEFINITIONS, NATIONAL, rollout_lines, survey
from collector.school_list import LIST_WINDOW, SCHOOL_LIST, SLOT_S
from collector.settings import CollectorSettings, InfluxSettings
from collector.state_keeper import StateKeeper
from grafana.build import render as build_dashboards
from tests.support import grafana_queries
from tests.support.grafana_alerts import NO_VALUE, Instance, RuleError, evaluate, fires, render
from tests.support.services import REPO, Influx

GRAFANA = REPO / "grafana"
REGION = "Almaty"
INTERVAL = "1h"


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return generate(800, now=datetime.now(UTC).replace(microsecond=0), seed=11, tests_per_day=0.3)


@pytest.fixture
def stored(fleet: Fleet, database: Influx) -> Iterator[InfluxQL]:
    settings = InfluxSettings(url=database.url, database=database.database)
    writer = V1Writer(settings)
    write_direct(fleet, writer, settings, registry_at=fleet.now - timedelta(days=2))
    client = InfluxQL(settings)
    history = make_history_writer(settings)
    for at in (fleet.now - timedelta(days=1), fleet.now):
        found = survey(client, at)
        assert found is not None
        history.write(rollout_lines(found.rows(), at))
        if at == fleet.now:
            writer.write(found.chase_lines(stamp=datetime.now(UTC)))  # in the panel's window
    tags = {"collector_id": "c1"}
    writer.write(
        [
            encode("collector", tags, {"received": 100, "write_retries": 0,
                   "device_report_gaps": 0, "agent_restarts": 1},
                   ns(fleet.now - timedelta(hours=3))),
            encode("collector", tags, {"received": 700, "write_retries": 2,
                   "device_report_gaps": 0, "agent_restarts": 1, "lag_p50_ms": 310.0,
                   "lag_p99_ms": 900.0}, ns(fleet.now - timedelta(hours=1))),
            encode("collector", tags, {"received": 760, "lag_p50_ms": 280.0, "lag_p99_ms": 640.0},
                   ns(datetime.now(UTC) - timedelta(minutes=1))),  # in the lag alert's window
            encode("collector_rejections", tags | {"reason": "invalid_json"}, {"count": 1},
                   ns(fleet.now - timedelta(hours=3))),
            encode("collector_rejections", tags | {"reason": "invalid_json"}, {"count": 4},
                   ns(fleet.now - timedelta(hours=1))),
            encode("collector_rate_limited", tags | {"school_id": "KZ-FLOOD"}, {"messages": 900},
                   ns(datetime.now(UTC) - timedelta(minutes=2))),  # in the flood alert's window
        ]
    )  # fmt: skip
    with StateKeeper(CollectorSettings(influx=settings)) as keeper:
        keeper.tick()  # the current state, from raw points
    yield client
    client.close()


def writer_settings(database: Influx) -> InfluxSettings:
    return InfluxSettings(url=database.url, database=database.database)


def _school(fleet: Fleet) -> SchoolRecord:
    """A school of REGION with devices, tests, a failed one and an outage: the drill-down's
    choice."""
    return next(
        r for r in fleet.records
        if r.school.region == REGION and r.device_states and len(r.downloads) >= 3
        and any(d is None for t, d in r.downloads if t > fleet.now - timedelta(days=30))
        and any(hour.cause for hour in r.hours)
    )  # fmt: skip


def substitute(query: str, school: str, span: str = "30d") -> str:
    """Grafana's macros and variables, as Grafana expands them for InfluxQL."""
    return grafana_queries.substitute(query, REGION, school, span, INTERVAL)


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
    built = build_dashboards()
    assert sorted(built) == sorted(_dashboards())
    for name, text in built.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, f"run: python {name}"


def _every_query() -> list[tuple[str, str, str]]:
    """(where, query, time span) of every panel, variable and alert query."""
    return grafana_queries.every_query()


@pytest.mark.parametrize(
    ("where", "query", "span"), _every_query(), ids=[w for w, _, _ in _every_query()]
)
def test_every_query_runs_and_returns_data(
    fleet: Fleet, stored: InfluxQL, where: str, query: str, span: str
) -> None:
    rows = _rows(_run(stored, query, _school(fleet).school.school_id, span))
    assert rows or where in QUIET, where


# What a "now" question may read back, by what it reads (the state's writers
# refresh every series within WINDOW; the rollup writes every rollout.interval_s).
NOW_SPANS = {'"state".': 20 * 60, '"history"."rollout"': 25 * 60, '"rollout_school"': 25 * 60,
             '"collector_rate_limited"': 15 * 60}  # fmt: skip
SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _levels(query: str) -> list[str]:
    """Each SELECT of ``query`` (outer first) without the subqueries nested in it."""
    levels: list[list[str]] = [[]]
    open_levels: list[int] = [0]  # the level each open parenthesis belongs to
    stack: list[bool] = []  # per open parenthesis: whether it opened a subquery
    done: list[str] = []
    for i, char in enumerate(query):
        if char == "(":
            sub = query[i + 1 :].lstrip().upper().startswith("SELECT")
            stack.append(sub)
            if sub:
                levels.append([])
                open_levels.append(len(levels) - 1)
                continue
        elif char == ")" and stack.pop():
            done.append("".join(levels[open_levels.pop()]))
            continue
        levels[open_levels[-1]].append(char)
    return ["".join(levels[0]), *done]


def _time_bounds(level: str, span_s: int) -> list[int]:
    """The seconds back that each time condition of one SELECT's WHERE lets it read."""
    where = re.search(r"\bWHERE\b(.*?)(?:\bGROUP BY\b|\bORDER BY\b|\bLIMIT\b|$)", level)
    if where is None:
        return []
    found = [span_s] * where[1].count("$timeFilter")
    for amount, unit in re.findall(r"\btime >=? now\(\) - (\d+)([smhd])\b", where[1]):
        found.append(int(amount) * SPAN_UNITS[unit])
    return found


@pytest.mark.parametrize(
    ("where", "query", "span"), _every_query(), ids=[w for w, _, _ in _every_query()]
)
def test_every_query_is_bounded_in_time(where: str, query: str, span: str) -> None:
    """Each SELECT level has a lower time bound (InfluxDB 1.x scans every shard for a
    subquery without one); a "now" question reads no further back than its source's
    refresh. ``$timeFilter`` is the range a person chose, or an alert's relativeTimeRange.
    SHOW TAG VALUES reads the series index, not points."""
    if query.startswith("SHOW TAG VALUES"):
        assert " time " not in query
        return
    span_s = int(span[:-1]) * SPAN_UNITS[span[-1]]
    now_question = "GROUP BY time(" not in query
    for level in _levels(query):
        bounds = _time_bounds(level, span_s)
        assert bounds, (where, level)
        source = re.search(r'FROM ("\w+"(?:\."\w+")?)', query)
        assert source, (where, query)
        limit = next((s for name, s in NOW_SPANS.items() if source[1].startswith(name)), None)
        if now_question and limit is not None:
            assert max(bounds) <= limit, (where, level, limit)


def _newest_reads() -> list[tuple[str, str]]:
    return [(w, q) for w, q, _ in _every_query()
            if '"state".' in q and f'"{SCHOOL_LIST}"' not in q]  # fmt: skip


@pytest.mark.parametrize(("where", "query"), _newest_reads(), ids=[w for w, _ in _newest_reads()])
def test_every_state_read_takes_each_series_newest_point_whole(where: str, query: str) -> None:
    """The inner query reads a field that the keeper writes on every point, so its newest
    row is the series' newest point even where the fields the panel shows are gone from
    it; and it reads every field the outer query uses."""
    outer, inner = _levels(query)
    measurement = re.search(r'FROM "state"\."(\w+)"', inner)
    assert measurement, where
    written = CurrentState()  # a school known by nothing but its name: what every point has
    written.school("KZ-1", "R")
    fields = set(written.school_fields("KZ-1", 0, {}))
    if measurement[1] == "school_alert":
        fields = set(written.alert_fields({}))
    if measurement[1] == "device_state":
        written.devices["KZ-1", "d", "panic_button"] = DeviceFacts(0, "R", "up", 1, 1, None, None)
        fields = set(written.device_fields(("KZ-1", "d", "panic_button"), 0))
    selected = re.fullmatch(r"SELECT (.*?) FROM .*", inner.strip(), re.DOTALL)
    assert selected, where
    names = re.findall(r'"(\w+)"', selected[1])
    assert names[0] in fields, (where, names[0], fields)
    tags = set(re.findall(r'"(\w+)"', inner.split("GROUP BY")[1]))
    used = set(re.findall(r'(?<!AS )"(\w+)"', outer)) - tags
    assert used <= set(names), (where, used - set(names))


def _list_reads() -> list[tuple[str, str, str]]:
    return [(w, q, s) for w, q, s in _every_query() if f'"{SCHOOL_LIST}"' in q]


@pytest.mark.parametrize(
    ("where", "query", "span"), _list_reads(), ids=[w for w, _, _ in _list_reads()]
)
def test_every_read_of_the_school_list_scans_one_slot(where: str, query: str, span: str) -> None:
    """A read of ``school_list`` sees each school once only over exactly one slot, ending
    now (collector.school_list): a panel writes the window, an alert's range is one slot."""
    assert len(_levels(query)) == 1, where
    if "$timeFilter" in query:
        assert span == f"{SLOT_S}s", where  # Grafana: time >= <now - 300 s>ms and time <= <now>ms
        assert "now()" not in query, where
    else:
        assert query.count(LIST_WINDOW) == 1, where
        assert query.count("time ") == 2, where


def test_the_time_bound_check_finds_an_unbounded_subquery() -> None:
    unbounded = 'SELECT sum("d") FROM (SELECT last("x") AS "d" FROM "m" WHERE $timeFilter)'
    outer, inner = _levels(unbounded)
    assert _time_bounds(inner, 60) == [60]
    assert _time_bounds(outer, 60) == []
    assert _time_bounds('SELECT * FROM "m" WHERE time > now() - 20m', 1) == [1200]


# Queries that rightly return nothing on the simulated fleet: their own tests write the data.
QUIET = {"alert region-silent: A"}  # no region is cut off in the fleet


def test_the_national_stats_show_the_true_percentages(fleet: Fleet, stored: InfluxQL) -> None:
    truth = ground_truth(fleet, fleet.now)
    for panel in _dashboards()["national-overview.json"]["panels"]:
        if panel["type"] != "stat":
            continue
        metric = re.search(r"\"metric\" = '(\w+)'", panel["targets"][0]["query"])
        assert metric, panel["title"]
        values = [row["last"] for row in _rows(_run(stored, panel["targets"][0]["query"], ""))]
        assert values[-1] == pytest.approx(truth[metric[1], NATIONAL], abs=0.1), panel["title"]


def test_the_region_table_shows_every_region_and_metric(fleet: Fleet, stored: InfluxQL) -> None:
    truth = ground_truth(fleet, fleet.now)
    query = _panel("national-overview.json", "By region (a region opens its page)")["targets"][0][
        "query"
    ]
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
    window = fleet.now - timedelta(days=30)
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
    query = _panel(
        "safety-devices.json",
        "Devices down, late or stale now (longest first; a school opens its page)",
    )
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
    panel = _panel(
        "fleet-health.json", "Agents offline now (last status in 90 days; a school opens its page)"
    )
    rows = _rows(_run(stored, panel["targets"][0]["query"], ""))
    shown = [row["school_id"] for row in rows]
    assert sorted(shown) == sorted(r.school.school_id for r in fleet.records if r.agent_lost)
    assert shown


def _alert(uid: str) -> dict[str, Any]:
    rules = yaml.safe_load(
        (GRAFANA / "provisioning" / "alerting" / "school-monitor.yaml").read_text()
    )
    return next(r for g in rules["groups"] for r in g["rules"] if r["uid"] == uid)


def _firing(client: InfluxQL, uid: str) -> list[Instance]:
    """The rule's firing instances, evaluated as Grafana does; every summary renders whole."""
    rule = _alert(uid)
    instances = evaluate(rule, client)
    firing = [i for i in instances if fires(rule, i)]
    for instance in firing:
        for name, template in rule["annotations"].items():
            text = render(template, instance)
            assert NO_VALUE not in text, f"{uid} {name}: {text}"
    return firing


def _schools(instances: list[Instance]) -> set[str]:
    return {i.labels["school_id"] for i in instances}


def test_the_below_standard_alert_fires_for_three_slow_tests_in_a_row(
    fleet: Fleet, stored: InfluxQL
) -> None:
    firing = _firing(stored, "school-below-standard")
    expected = set()
    window = fleet.now - timedelta(days=30)
    for record in fleet.records:
        good = sorted((t, d) for t, d in record.downloads if d is not None and t > window)
        if len(good) >= 3 and all(d < 20 for _, d in good[-3:]):
            expected.add(record.school.school_id)
    assert _schools(firing) == expected
    assert expected
    regions = {r.school.school_id: r.school.region for r in fleet.records}
    assert all(i.labels["region"] == regions[i.labels["school_id"]] for i in firing)
    best = next(i for i in firing)
    record = next(r for r in fleet.records if r.school.school_id == best.labels["school_id"])
    slow = sorted((t, d) for t, d in record.downloads if d is not None and t > window)[-3:]
    assert f"the best {max(d for _, d in slow):.1f} Mbps" in render(
        _alert("school-below-standard")["annotations"]["summary"], best
    )


def test_grafana_refuses_maths_on_an_unreduced_series(stored: InfluxQL) -> None:
    """The rule as it was: $A (a series) in the condition's maths. Grafana errors on it."""
    rule = copy.deepcopy(_alert("school-below-standard"))
    rule["data"] = [d for d in rule["data"] if d["refId"] in ("A", "B", "C", "D")]
    rule["data"].append(
        {
            "refId": "E",
            "datasourceUid": "__expr__",
            "model": {"type": "math", "expression": "$A < 20 && $D >= 3"},
        }
    )
    rule["condition"] = "E"
    with pytest.raises(RuleError, match="only reduced data can be alerted on"):
        evaluate(rule, stored)
    reduced = _alert("school-below-standard")
    assert "A" not in evaluate(reduced, stored)[0].values  # a query never reaches $values


def test_the_panic_button_alert_fires_for_buttons_down(fleet: Fleet, stored: InfluxQL) -> None:
    firing = _firing(stored, "panic-button-down")
    expected = {
        (r.school.school_id, device_id)
        for r in fleet.records
        for device_id, (kind, state) in r.device_states.items()
        if kind is DeviceKind.PANIC_BUTTON and state is DeviceState.DOWN
    }
    assert {(i.labels["school_id"], i.labels["device_id"]) for i in firing} == expected
    assert expected
    assert all(i.labels["region"] for i in firing)


def test_the_agent_offline_alert_fires_for_lost_agents(fleet: Fleet, stored: InfluxQL) -> None:
    firing = _firing(stored, "agent-offline")
    assert _schools(firing) == {r.school.school_id for r in fleet.records if r.agent_lost}


@pytest.mark.parametrize("local_hour", [12, 2])
def test_the_offline_alert_fires_only_during_school_hours(
    fleet: Fleet, stored: InfluxQL, database: Influx, local_hour: int
) -> None:
    """The keeper's school hours (08:00-20:00) in a time zone where it is now ``local_hour``:
    schools whose agents are lost fire at noon, and not at two in the morning."""
    hour = datetime.now(UTC).hour
    if datetime.now(UTC).minute == 59:  # the hour could change between here and the tick
        time.sleep(61)
        hour = datetime.now(UTC).hour
    offset = (local_hour - hour + 12) % 24 - 12
    settings = CollectorSettings(
        influx=writer_settings(database), school_hours={"timezone": f"{offset:+03d}:00"}
    )
    with StateKeeper(settings) as keeper:
        keeper.tick()
    lost = {r.school.school_id for r in fleet.records if r.agent_lost}
    assert lost
    firing = _firing(stored, "offline-in-school-hours")
    assert _schools(firing) == (lost if local_hour == 12 else set())
    assert all(i.labels["region"] for i in firing)


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
    instances = evaluate(_alert("collector-lagging"), stored)
    assert {i.labels["collector_id"] for i in _firing(stored, "collector-lagging")} == {"behind"}
    assert "keeping-up" in {i.labels["collector_id"] for i in instances}


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
    firing = _firing(stored, "school-flooding")
    assert _schools(firing) == {"KZ-FLOOD"}  # the flood 40 minutes ago has stopped
    assert "KZ-FLOOD: 900 messages" in render(_alert("school-flooding")["annotations"]["summary"],
                                              firing[0])  # fmt: skip
    table = _rows(_run(stored, _panel("pipeline-health.json",
                  "Schools flooding now (rejected in the last 15 minutes)")["targets"][0]["query"],
                  ""))  # fmt: skip
    assert [(row["school_id"], row["rejected"]) for row in table] == [("KZ-FLOOD", 900)]


def test_the_silent_collector_alert_names_the_collector_that_stopped(
    stored: InfluxQL, database: Influx
) -> None:
    """One collector writes until now, one stopped 20 minutes ago.

    The evaluation is one moment; Grafana's ``for: 10m`` (three evaluations in a
    row) is what keeps a healthy collector whose bucket has just begun from firing.
    """
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    now = datetime.now(UTC)
    writer.write(
        [
            encode("collector", {"collector_id": cid}, {"received": minute}, ns(at))
            for minute in range(60)
            for cid, at in (
                ("c-live", now - timedelta(minutes=minute)),
                ("c-dead", now - timedelta(minutes=20 + minute)),
                ("c1", now - timedelta(minutes=minute)),
            )
        ]
    )
    assert {i.labels["collector_id"] for i in _firing(stored, "collector-silent")} == {"c-dead"}
    assert _firing(stored, "pipeline-silent") == []


def test_no_data_from_any_collector_fires(database: Influx) -> None:
    empty = InfluxQL(InfluxSettings(url=database.url, database=database.database))
    rule = _alert("pipeline-silent")
    (instance,) = evaluate(rule, empty)
    assert instance.state == "NoData"
    assert fires(rule, instance)  # noDataState: Alerting
    empty.close()


def test_the_region_silent_alert_fires_when_most_of_a_region_is_cut_off(
    fleet: Fleet, stored: InfluxQL, database: Influx
) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    now = datetime.now(UTC)
    region = [r for r in fleet.records if r.school.region == REGION]
    half = len(region) // 2 + 1
    lines = []
    for number, record in enumerate(region):
        sid = record.school.school_id
        tags = {"school_id": sid, "region": REGION, "agent_id": f"agent-{sid.lower()}"}
        online: dict[str, FieldValue] = {"online": 1, "reason": "heartbeat"}
        lost: dict[str, FieldValue] = {"online": 0, "reason": "connection_lost"}
        lines.append(encode("agent", tags | {"status": "online"}, online,
                            ns(now - timedelta(hours=2))))  # fmt: skip
        if number < half:
            lines.append(encode("agent", tags | {"status": "offline"}, lost,
                                ns(now - timedelta(minutes=20))))  # fmt: skip
    writer.write(lines)
    with StateKeeper(CollectorSettings(influx=writer_settings(database))) as keeper:
        keeper.tick()  # a tick later
    firing = _firing(stored, "region-silent")
    assert [i.labels["region"] for i in firing] == [REGION]
    text = render(_alert("region-silent")["annotations"]["summary"], firing[0])
    assert f"{half} of {len(region)} agents" in text


# -- what Grafana does with the panels' own settings --------------------------


def _fields(client: InfluxQL, panel: dict[str, Any], school: str) -> set[str]:
    """The field names a panel's queries give Grafana: columns, GROUP BY tags, aliases."""
    names: set[str] = set()
    for item in panel["targets"]:
        for series in _run(client, item["query"], school):
            names |= set(series.tags) | {"Time"} | set(series.columns[1:])
    for step in panel.get("transformations", []):
        if step["id"] == "groupingToMatrix":
            options = step["options"]
            names.add(f"{options['rowField']}\\{options['columnField']}")
    return names


def _displayed(panel: dict[str, Any], fields: set[str]) -> set[str]:
    """What the table shows as column names: organize's exclusions, then displayName."""
    hidden = {
        name
        for step in panel.get("transformations", [])
        if step["id"] == "organize"
        for name, excluded in step["options"].get("excludeByName", {}).items()
        if excluded
    }
    renamed = {
        o["matcher"]["options"]: p["value"]
        for o in panel["fieldConfig"]["overrides"]
        for p in o["properties"]
        if p["id"] == "displayName"
    }
    return {renamed.get(name, name) for name in fields - hidden}


def _every_panel() -> list[tuple[str, dict[str, Any]]]:
    return [(name, p) for name, board in _dashboards().items() for p in board["panels"]]


def test_every_sort_names_a_column_the_table_shows(fleet: Fleet, stored: InfluxQL) -> None:
    sid = _school(fleet).school.school_id
    sorted_tables = [(n, p) for n, p in _every_panel() if p.get("options", {}).get("sortBy")]
    assert len(sorted_tables) >= 3
    for name, panel in sorted_tables:
        shown = _displayed(panel, _fields(stored, panel, sid))
        for sort in panel["options"]["sortBy"]:
            assert sort["displayName"] in shown, (name, panel["title"], shown)


def test_every_link_opens_an_existing_dashboard_with_its_variables(
    fleet: Fleet, stored: InfluxQL
) -> None:
    boards = {board["uid"]: board for board in _dashboards().values()}
    sid = _school(fleet).school.school_id
    checked = 0
    for name, panel in _every_panel():
        links = [
            link
            for o in panel["fieldConfig"]["overrides"]
            for p in o["properties"]
            if p["id"] == "links"
            for link in p["value"]
        ] + panel["fieldConfig"]["defaults"].get("links", [])
        fields = _fields(stored, panel, sid) if links else set()
        for link in links:
            target = re.fullmatch(r"/d/([\w-]+)/\?(.*)", link["url"])
            assert target, (name, link)
            board = boards[target[1]]
            variables = {v["name"] for v in board["templating"]["list"]}
            for pair in target[2].split("&"):
                if pair == "${__url_time_range}":
                    continue
                key, value = pair.split("=", 1)
                assert key.removeprefix("var-") in variables, (name, panel["title"], key)
                for ref in re.findall(r"\$\{__data\.fields\.(\w+)\}", value):
                    assert ref in fields, (name, panel["title"], ref, fields)
            checked += 1
    assert checked >= 6  # map, region table, chase list, schools of a region, devices, agents


def test_the_region_table_rows_link_to_their_region(stored: InfluxQL) -> None:
    panel = _panel("national-overview.json", "By region (a region opens its page)")
    step = panel["transformations"][0]["options"]
    column = f"{step['rowField']}\\{step['columnField']}"  # as Grafana's groupingToMatrix names it
    override = next(o for o in panel["fieldConfig"]["overrides"]
                    if o["matcher"]["options"] == column)  # fmt: skip
    links = next(p["value"] for p in override["properties"] if p["id"] == "links")
    assert "var-region=${__value.raw}" in links[0]["url"]


def test_the_panic_button_chart_counts_buttons_down_not_reports(
    fleet: Fleet, stored: InfluxQL
) -> None:
    panel = _panel("safety-devices.json", "Panic buttons down (at each interval's end)")
    expected = sum(
        1
        for r in fleet.records
        for kind, state in r.device_states.values()
        if kind is DeviceKind.PANIC_BUTTON and state is DeviceState.DOWN
    )
    for interval in ("5m", "1h", "6h"):  # the count must not change with the zoom
        query = panel["targets"][0]["query"].replace("$__interval", interval)
        series = _run(stored, query, "", "1d")
        counts = [v for _, v in series[0].values]
        assert max(counts) == expected, interval
    assert panel["interval"] == "5m"


def test_rejections_are_added_up_across_collectors(
    fleet: Fleet, stored: InfluxQL, database: Influx
) -> None:
    """Two collectors' cumulative counters: the panel shows the sum of their increases."""
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    base = fleet.now - timedelta(hours=5)
    writer.write(
        [
            encode("collector_rejections", {"collector_id": cid, "reason": "bad_timestamp"},
                   {"count": count}, ns(base + timedelta(minutes=minute)))
            for cid, series in (("c2", [0, 10, 30]), ("c3", [1000, 1005, 1006]))
            for minute, count in zip((0, 60, 120), series, strict=True)
        ]
    )  # fmt: skip
    panel = _panel("pipeline-health.json", "Rejections by reason (per interval, all collectors)")
    series = _run(stored, panel["targets"][0]["query"], "")
    bad = next(s for s in series if s.tags["reason"] == "bad_timestamp")
    assert sum(v for _, v in bad.values if v) == (30 - 0) + (1006 - 1000)


def test_every_quantity_has_a_unit() -> None:
    for name, panel in _every_panel():
        assert panel["fieldConfig"]["defaults"].get("unit"), (name, panel["title"])


def test_the_map_colours_schools_by_gigas_categories() -> None:
    panel = _panel("national-overview.json", next(
        p["title"] for p in _dashboards()["national-overview.json"]["panels"]
        if p["type"] == "geomap"))  # fmt: skip
    (layer,) = panel["options"]["layers"]
    colour = layer["config"]["style"]["color"]["field"]
    assert colour == "giga_category"
    assert '"giga_category"' in panel["targets"][0]["query"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "red"), (1, "orange"), (2, "green")]
    (override,) = [o for o in panel["fieldConfig"]["overrides"]
                   if o["matcher"]["options"] == "giga_category"]  # fmt: skip
    mappings = next(p["value"] for p in override["properties"] if p["id"] == "mappings")
    values, nothing = mappings[0]["options"], mappings[1]["options"]
    assert {code: v["text"] for code, v in values.items()} == {
        "0": "bad", "1": "moderate", "2": "good"}  # fmt: skip
    assert nothing["match"] == "null"  # schools without a test: "no data"
    view = panel["options"]["view"]
    assert 40 < view["lat"] < 56
    assert 46 < view["lon"] < 88
    units = {o["matcher"]["options"]: p["value"] for o in panel["fieldConfig"]["overrides"]
             for p in o["properties"] if p["id"] == "unit"}  # fmt: skip
    assert units["download_mbps"] == "Mbits"
    assert units["latitude"] == "none"


def test_the_map_shows_every_registered_school_at_its_place_with_its_average(
    fleet: Fleet, stored: InfluxQL
) -> None:
    panel = next(p for p in _dashboards()["national-overview.json"]["panels"]
                 if p["type"] == "geomap")  # fmt: skip
    (query,) = [t["query"] for t in panel["targets"]]
    rows = [(s.tags, row) for s in _run(stored, query, "") for row in s.rows()]
    shown = {row["school_id"]: (tags, row) for tags, row in rows}
    assert len(rows) == len(shown)  # each school once
    assert set(shown) == {r.school.school_id for r in fleet.records}  # reported or not
    window = fleet.now - timedelta(days=30)
    compared = 0
    for record in fleet.records:
        school = record.school
        tags, row = shown[school.school_id]
        assert tags["region"] == school.region
        assert (row["name"], row["latitude"], row["longitude"]) == (
            school.name, school.latitude, school.longitude)  # fmt: skip
        tests = [d for t, d in record.downloads if window < t <= fleet.now and d is not None]
        if any(abs(t - window) < timedelta(minutes=10) for t, _ in record.downloads):
            continue  # the keeper's tick came a little after fleet.now
        expected = sum(tests) / len(tests) if tests else None
        assert row["download_mbps"] == pytest.approx(expected), school.school_id
        assert row["giga_category"] == _giga(expected, school.students), school.school_id
        compared += 1
    assert compared > 0.95 * len(fleet.records)


def _giga(mean: float | None, students: int | None) -> int | None:
    """Giga Maps' category, by the ITU rule: 20 Mbps, or 50 kbps a student above 400."""
    if mean is None:
        return None
    standard = 20.0 if students is None or students <= 400 else max(20.0, 0.05 * students)
    return 2 if mean >= standard - 1e-6 else 1 if mean >= 1.0 - 1e-6 else 0


def test_the_version_chart_has_a_slice_per_row() -> None:
    for name, panel in _every_panel():
        grouped = any(t["id"] == "groupBy" for t in panel.get("transformations", []))
        if panel["type"] == "piechart" and grouped:
            assert panel["options"]["reduceOptions"]["values"] is True, (name, panel["title"])


def test_the_chase_list_shows_the_schools_to_chase(fleet: Fleet, stored: InfluxQL) -> None:
    panel = _panel(
        "national-overview.json",
        "Schools to chase: at risk, dropped off or never reported (a school opens its page)",
    )
    series = _run(stored, panel["targets"][0]["query"], "")
    shown = {(s.tags["metric"], s.tags["school_id"]) for s in series}
    expected = set()
    for record in fleet.records:
        last = record.last_report
        if last is None:
            expected.add(("never_reported", record.school.school_id))
        elif fleet.now - last > timedelta(days=28):
            expected.add(("dropped_off", record.school.school_id))
        elif fleet.now - last > timedelta(days=21):
            expected.add(("at_risk", record.school.school_id))
    assert shown == expected
    assert {metric for metric, _ in shown} == {"never_reported", "dropped_off", "at_risk"}
    regions = {r.school.school_id: r.school.region for r in fleet.records}
    assert all(s.tags["region"] == regions[s.tags["school_id"]] for s in series)


def test_an_alert_storm_becomes_one_notification_per_rule_and_region(
    fleet: Fleet, stored: InfluxQL
) -> None:
    """Grafana's Alertmanager sends one notification per route and group_by values."""
    teams = load_teams(REPO / "deploy" / "alert-teams.example.toml")
    (policy,) = provisioning(teams)["policies"]
    rules = yaml.safe_load(
        (GRAFANA / "provisioning" / "alerting" / "school-monitor.yaml").read_text()
    )["groups"][0]
    instances = 0
    notifications: dict[str, set[tuple[str, ...]]] = {}
    for uid in ("school-below-standard", "panic-button-down", "agent-offline"):
        rule = _alert(uid)
        for instance in _firing(stored, uid):
            labels = instance.labels | rule["labels"] | {
                "alertname": rule["title"], "grafana_folder": rules["folder"]
            }  # fmt: skip
            route = next(
                (r for r in policy["routes"]
                 if all(labels.get(k) == v for k, _, v in r["object_matchers"])),
                policy,
            )  # fmt: skip
            key = tuple(labels.get(name, "") for name in route["group_by"])
            notifications.setdefault(route["receiver"], set()).add(key)
            instances += 1
    sent = sum(len(keys) for keys in notifications.values())
    regions = {r.school.region for r in fleet.records}
    assert instances > 3 * sent  # hundreds of schools, a few dozen messages
    assert sent <= 3 * len(regions)
    # Turkistan has its own team in the example; its alerts reach it and nobody else
    assert {key[2] for key in notifications["school-monitor Turkistan"]} == {"Turkistan"}
    assert "Turkistan" not in {key[2] for key in notifications["school-monitor national"]}
