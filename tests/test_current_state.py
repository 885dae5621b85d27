"""The current state equals what the raw points say: on a simulated fleet, and after late
points, replays, redeliveries and Last Wills that go through a running collector."""

from __future__ import annotations

import math
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from localstack import Mosquitto

from agent.contract import AgentState, AgentStatus, HostHealth, StatusReason
from collector import rollup as rollup_module
from collector.current_state import AGENT_DAYS, AGENT_FIELDS, LATE_S, NS, CurrentState, days_ns
from collector.fleet import Fleet, generate, write_direct
from collector.influx.query import InfluxQL, quote_literal
from collector.influx.v1 import V1Writer
from collector.line_protocol import encode
from collector.points import ns
from collector.rollout import rollout
from collector.school_list import LIST_WINDOW
from collector.settings import CollectorSettings, InfluxSettings
from collector.state_keeper import StateKeeper, late_reads
from tests.conftest import start_collector
from tests.support.publishing import SchoolPublisher, speed_report
from tests.support.services import Influx, collector_process, command_env, wait_for

# Each school_state field and the raw InfluxQL whose answer it stands for, at the same moment.
RAW: dict[str, str] = {
    "download_mean_mbps": 'SELECT mean("download_mbps") FROM "speed" WHERE "result" = '
    "'success' AND time > now() - 30d AND {school}",
    "download_latest_mbps": 'SELECT last("download_mbps") FROM "speed" WHERE "result" = '
    "'success' AND time > now() - 30d AND {school}",
    "tests": 'SELECT count("download_mbps") FROM "speed" WHERE "result" = \'success\' '
    "AND time > now() - 30d AND {school}",
    "last3_max_mbps": 'SELECT max("download_mbps") FROM (SELECT "download_mbps" FROM "speed" '
    "WHERE \"result\" = 'success' AND time > now() - 30d AND {school} ORDER BY time DESC "
    "LIMIT 3) ORDER BY time DESC",
    "online": 'SELECT last("online") FROM "agent" WHERE time > now() - 90d AND {school}',
    "reason": 'SELECT last("reason") FROM "agent" WHERE time > now() - 90d AND {school}',
    "version": 'SELECT last("version") FROM "agent" WHERE "status" = \'online\' '
    "AND time > now() - 30d AND {school}",
    "outbox_messages": 'SELECT last("outbox_messages") FROM "agent" '
    "WHERE time > now() - 30d AND {school}",
    **{  # the registry's place, for the map
        name: f'SELECT last("{name}") FROM "history"."school" WHERE time > now() - 1d '
        "AND {school}"
        for name in ("name", "latitude", "longitude")
    },
}


def raw_fields(ql: InfluxQL, school_id: str) -> dict[str, Any]:
    found = {}
    for name, query in RAW.items():
        series = ql.query(query.format(school=f'"school_id" = {quote_literal(school_id)}'))
        if series and series[0].values[0][1] is not None:
            found[name] = series[0].values[0][1]
    return found


def state_fields(ql: InfluxQL) -> dict[str, dict[str, Any]]:
    """Each school's newest school_state point, as the dashboards read it."""
    series = ql.query(
        'SELECT * FROM "state"."school_state" WHERE time > now() - 20m GROUP BY "school_id" '
        "ORDER BY time DESC LIMIT 1"
    )
    return {
        s.tags["school_id"]: {k: v for k, v in s.rows()[0].items() if v is not None} for s in series
    }


def list_fields(ql: InfluxQL) -> dict[str, dict[str, Any]]:
    """Each school's row of school_list, as the lists of every school read it (once each)."""
    found: dict[str, dict[str, Any]] = {}
    for s in ql.query(f'SELECT * FROM "state"."school_list" WHERE {LIST_WINDOW}'):
        for row in s.rows():
            fields = {k: v for k, v in row.items() if v is not None and k != "time"}
            school_id = fields.pop("school_id")
            assert school_id not in found
            found[school_id] = fields
    return found


def alert_schools(ql: InfluxQL) -> set[str]:
    """The schools whose newest school_alert point is flagged."""
    series = ql.query(
        'SELECT "flagged" FROM (SELECT "flagged" FROM "state"."school_alert" WHERE time > now() '
        '- 20m GROUP BY "school_id" ORDER BY time DESC LIMIT 1) WHERE "flagged" = 1 AND time > '
        'now() - 20m GROUP BY "school_id" ORDER BY time DESC'
    )
    return {s.tags["school_id"] for s in series}


def same(state: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """The fields of RAW on which they differ."""
    wrong = []
    for name in RAW:
        a, b = state.get(name), raw.get(name)
        if isinstance(a, float) and isinstance(b, float):
            if not math.isclose(a, b, rel_tol=1e-9):
                wrong.append(f"{name}: state {a} raw {b}")
        elif a != b:
            wrong.append(f"{name}: state {a!r} raw {b!r}")
    return wrong


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return generate(300, now=datetime.now(UTC).replace(microsecond=0), seed=13, tests_per_day=1.0)


def test_the_state_of_a_simulated_fleet_equals_its_raw_points(
    fleet: Fleet, database: Influx, request: pytest.FixtureRequest
) -> None:
    influx = InfluxSettings(url=database.url, database=database.database)
    write_direct(fleet, V1Writer(influx), influx, registry_at=fleet.now - timedelta(hours=1))
    keeper = StateKeeper(CollectorSettings(influx=influx))
    request.addfinalizer(keeper.stop)
    assert keeper.tick() > 0
    client = database.client
    states = state_fields(client)
    assert states.keys() == {r.school.school_id for r in fleet.records}  # reported or not
    wrong = {sid: same(fields, raw_fields(client, sid)) for sid, fields in states.items()}
    assert {sid: w for sid, w in wrong.items() if w} == {}
    tags = ("time", "school_id")  # the list: school_id a field, one series per region
    assert list_fields(client) == {sid: {k: v for k, v in f.items() if k not in tags}
                                   for sid, f in states.items()}  # fmt: skip
    flagged = {sid for sid, f in states.items() if f.get("online") == 0
               or (f.get("last3_tests") == 3 and f["last3_max_mbps"] < 20)}  # fmt: skip
    assert alert_schools(client) == flagged
    assert flagged
    at = datetime.now(UTC)
    survey = keeper.survey(at)
    assert survey is not None
    assert survey.rows() == rollout(client, at)  # every percentage, nationally and by region
    listed = _devices(
        client,
        'SELECT "state" FROM (SELECT * FROM "state"."device_state" WHERE time > now() - 20m '
        'GROUP BY "school_id", "device_id" ORDER BY time DESC LIMIT 1) WHERE "listed" = 1 '
        'AND time > now() - 20m GROUP BY "school_id", "device_id" ORDER BY time DESC',
    )
    raw_listed = _devices(
        client,
        'SELECT "code" FROM (SELECT last("state_code") AS "code" FROM "device" WHERE '
        'time > now() - 15m GROUP BY "school_id", "device_id") WHERE "code" >= 2 '
        'AND time > now() - 15m GROUP BY "school_id", "device_id"',
    )
    assert listed == raw_listed
    assert listed


def _devices(client: InfluxQL, query: str) -> set[tuple[str, str]]:
    """(school, device) of each series ``query`` returns."""
    return {(s.tags["school_id"], s.tags["device_id"]) for s in client.query(query)}


def _status(publisher: SchoolPublisher, online: bool, at: datetime, reason: StatusReason) -> None:
    health = HostHealth(cpu_percent=1.0, memory_percent=2.0, memory_available_bytes=10**9,
                        disk_percent=3.0, disk_free_bytes=10**10, uptime_s=60)  # fmt: skip
    status = AgentStatus(
        school_id=publisher.school_id,
        agent_id=publisher.agent_id,
        measured_at=at,
        status=AgentState.ONLINE if online else AgentState.OFFLINE,
        reason=reason,
        version="9.9.9",
        boot_id=uuid.uuid4().hex,
        host=health if online else None,
    )
    publisher.publish_raw("agent", status.model_dump_json(exclude_none=True).encode())


def test_a_school_is_on_the_alert_list_while_flagged_and_leaves_it_with_one_point() -> None:
    state = CurrentState()
    school = state.school("KZ-1", "R")
    at = days_ns(100)
    school.add_agent("online", at - NS, 0)

    def alerts(tick: int, refresh: bool = False) -> list[str]:
        return [line for line in state.lines(tick, refresh) if line.startswith("school_alert,")]

    head = "school_alert,region=R,school_id=KZ-1"
    assert alerts(at) == [f"{head} flagged=1i,in_school_hours=0i,online=0i {at}"]
    assert alerts(at + 60 * NS) == []
    assert len(alerts(at + 120 * NS, refresh=True)) == 1  # in every reader's window
    school.add_agent("online", at + 130 * NS, 1)
    assert alerts(at + 180 * NS) == [
        f"{head} flagged=0i,in_school_hours=0i,online=1i {at + 180 * NS}"
    ]  # the rule sees it fine, and resolves
    assert alerts(at + 240 * NS, refresh=True) == []
    for second, mbps in enumerate((5.0, 30.0, 12.0, 8.0)):  # the latest three: 30, 12, 8
        school.add_result(at + (250 + second) * NS, True, mbps)
    assert alerts(at + 300 * NS) == []
    school.add_result(at + 310 * NS, True, 3.0)  # then 12, 8, 3
    (line,) = alerts(at + 360 * NS)
    assert "flagged=1i,in_school_hours=0i,last3_max_mbps=12" in line


def test_a_school_fine_again_while_no_keeper_ran_leaves_the_alert_list(database: Influx) -> None:
    influx = InfluxSettings(url=database.url, database=database.database)
    tags = {"school_id": "KZ-9", "region": "R", "agent_id": "agent-kz-9"}
    now = datetime.now(UTC)

    def status(online: int, minutes_ago: int) -> str:
        fields = {"online": online, "reason": "connection_lost" if not online else "heartbeat"}
        return encode("agent", tags | {"status": "online" if online else "offline"}, fields,
                      ns(now - timedelta(minutes=minutes_ago)))  # fmt: skip

    V1Writer(influx).write([status(0, 10)])
    with StateKeeper(CollectorSettings(influx=influx)) as keeper:
        keeper.tick()
    assert alert_schools(database.client) == {"KZ-9"}
    V1Writer(influx).write([status(1, 5)])  # back while the collector was restarting
    with StateKeeper(CollectorSettings(influx=influx)) as keeper:
        keeper.tick()  # a new keeper: it reads which schools the last one flagged
    assert alert_schools(database.client) == set()


def test_late_points_replays_and_wills_reach_the_state_through_the_collector(
    broker: Mosquitto,
    database: Influx,
    collector_env: dict[str, str],
    topic_root: str,
    school_id: str,
    tmp_path: Path,
) -> None:
    env = collector_env | {"SCHOOL_COLLECTOR_STATE__INTERVAL_S": "5"}
    process = start_collector(collector_process(tmp_path, command_env(**env)))
    client = database.client

    def agrees(check: dict[str, Any]) -> bool:
        state = state_fields(client).get(school_id, {})
        return all(state.get(k) == v for k, v in check.items()) and not same(
            state, raw_fields(client, school_id)
        )

    try:
        wait_for(lambda: "current state built" in process.log_file.read_text(), timeout=60,
                 what="the state keeper to start")  # fmt: skip
        now = datetime.now(UTC)
        with SchoolPublisher(broker.port, topic_root, school_id) as school:
            # an outbox sent after two days without a link: stored long after it was measured
            late = now - timedelta(days=2)
            assert (now - late).total_seconds() > LATE_S
            school.publish_raw(
                "speed", speed_report(school_id, school.agent_id, 12.0, late).model_dump_json()
                .encode())  # fmt: skip
            wait_for(lambda: agrees({"download_latest_mbps": 12.0, "tests": 1}), timeout=60,
                     what="the late test in the state")  # fmt: skip
            # a newer test, an older one replayed, and the late one redelivered
            for mbps, at in ((30.0, now - timedelta(hours=1)), (5.0, now - timedelta(days=5)),
                             (12.0, late)):  # fmt: skip
                school.publish_raw(
                    "speed", speed_report(school_id, school.agent_id, mbps, at).model_dump_json()
                    .encode())  # fmt: skip
            wait_for(
                lambda: agrees({"download_latest_mbps": 30.0, "tests": 3,
                                "download_mean_mbps": pytest.approx((12 + 30 + 5) / 3)}),
                timeout=60, what="the replayed tests in the state, the redelivery once",
            )  # fmt: skip
            _status(school, True, datetime.now(UTC), StatusReason.STARTED)
            wait_for(lambda: agrees({"online": 1}), timeout=60, what="the agent online")
            _status(school, False, datetime.now(UTC), StatusReason.CONNECTION_LOST)  # its will
            wait_for(lambda: agrees({"online": 0, "reason": "connection_lost"}), timeout=60,
                     what="the Last Will in the state")  # fmt: skip
    finally:
        process.stop()


def test_a_fast_agent_clock_counts_as_now_instead_of_hiding_the_school(database: Influx) -> None:
    """Two minutes ahead (within max_future_s): raw "now" queries skip these points until
    their time; the state takes them as measured at its tick, so nothing vanishes."""
    influx = InfluxSettings(url=database.url, database=database.database)
    now = datetime.now(UTC)
    ahead = ns(now + timedelta(minutes=2))
    tags = {"school_id": "KZ-FAST", "agent_id": "a1", "region": "Almaty"}
    V1Writer(influx).write([
        encode("agent", tags | {"status": "offline"}, {"online": 0, "reason": "stopped"},
               ns(now - timedelta(hours=1))),
        encode("agent", tags | {"status": "online"}, {"online": 1, "reason": "started",
               "version": "9.9.9"}, ahead),
        encode("device", tags | {"device_id": "pb1", "kind": "panic_button", "result": "refused"},
               {"state": "down", "state_code": 3, "up": 0, "changed_at_ms": ahead // 10**6,
                "label": "hall"}, ahead),
        encode("speed", tags | {"result": "success"}, {"result_code": 0, "download_mbps": 25.0},
               ahead),
    ])  # fmt: skip
    with StateKeeper(CollectorSettings(influx=influx)) as keeper:
        keeper.tick()
    state = state_fields(database.client)["KZ-FAST"]
    assert (state["online"], state["reason"], state["version"]) == (1, "started", "9.9.9")
    assert state["status_ms"] <= time.time() * 1000
    assert state["last_report_ms"] <= time.time() * 1000
    assert "download_latest_mbps" not in state  # a download waits for its time, as raw does
    listed = database.client.query(
        'SELECT "down" FROM "state"."device_state" WHERE time > now() - 20m '
        "AND \"school_id\" = 'KZ-FAST'"
    )
    assert listed
    assert listed[0].values[-1][1] == 1


def test_old_dated_points_make_a_bounded_read_again() -> None:
    """A school sending points 59 days old (an outbox, or a hostile school) is read again
    from then for speed results only; agent rows only since its latest agent values."""
    state = CurrentState()
    at = ns(datetime.now(UTC))
    minute = 60 * NS
    for name in AGENT_FIELDS:
        state.school("KZ-OLD", "Almaty").add_agent(name, at - minute, 1)
    state.school("KZ-NEW", "Almaty").add_agent("online", at - minute, 1)  # the rest missing
    long_ago = at - days_ns(59)
    reads = late_reads({"KZ-OLD": long_ago, "KZ-NEW": long_ago}, state, at)
    (read,) = reads
    assert read.since == long_ago
    assert read.schools == ["KZ-NEW", "KZ-OLD"]
    assert read.agent_since == long_ago  # KZ-NEW's missing fields may be in its old rows
    (alone,) = late_reads({"KZ-OLD": long_ago}, state, at)
    assert alone.agent_since == at - minute
    (ancient,) = late_reads({"KZ-OLD": at - days_ns(400)}, state, at)
    assert ancient.since == at - days_ns(AGENT_DAYS)  # nothing older changes the state
    many = {f"KZ-{n:03d}": at - n * minute for n in range(120)}
    reads = late_reads(many, state, at)
    assert [len(r.schools) for r in reads] == [50, 50, 20]
    assert reads[0].since == at - 119 * minute  # the oldest read together
    assert {s for r in reads for s in r.schools} == set(many)
    for read in reads:
        assert read.since == min(many[s] for s in read.schools)


def test_the_first_state_waits_for_a_backlog_to_drain_past_the_rollout_interval(
    database: Influx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later read gives up waiting after rollout.interval_s; the first one does not."""
    monkeypatch.setattr(rollup_module, "DRAIN_POLL_S", 0.05)
    influx = InfluxSettings(url=database.url, database=database.database)
    now = datetime.now(UTC)
    V1Writer(influx).write([encode("agent", {"school_id": "KZ-7", "region": "R"},
                                   {"online": 1, "reason": "heartbeat"}, ns(now))])  # fmt: skip
    settings = CollectorSettings(influx=influx, state={"interval_s": 5},
                                 rollout={"interval_s": 10})  # fmt: skip
    draining = threading.Event()
    draining.set()
    keeper = StateKeeper(settings, draining=draining.is_set)
    count = 'SELECT count("online") FROM "state"."school_state"'
    keeper.start()
    try:
        time.sleep(5 + 10 + 3)  # a whole interval, then longer than rollout.interval_s
        assert database.client.query(count) == []  # still waiting for the drain
        draining.clear()
        wait_for(lambda: database.client.query(count), timeout=30, what="the first state")
    finally:
        keeper.stop()
