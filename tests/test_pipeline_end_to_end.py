"""The whole pipeline on real services: agent → Mosquitto → collector → InfluxDB."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from localstack import InfluxDB, Mosquitto, Process, free_port

from agent.contract import HostHealth, SpeedReport
from tests.conftest import start_collector
from tests.support.influx_v2_shim import V2WriteShim
from tests.support.publishing import SchoolPublisher
from tests.support.services import (
    Influx,
    TopicListener,
    collector_process,
    command_env,
    parse_figure,
    run_agent,
    wait_for,
)


def test_agent_once_measurement_is_stored_with_its_download_figure(
    collector: Process, agent_env: dict[str, str], database: Influx, school_id: str
) -> None:
    result = run_agent("run", "--once", env=agent_env)

    assert result.returncode == 0, result.stderr
    assert "all acknowledged by the broker" in result.stdout
    assert "confirmed stored in InfluxDB by the collector" in result.stdout  # its receipts
    printed_download = parse_figure(result.stdout, "Download")
    speed = wait_for(
        lambda: database.rows(f"SELECT * FROM speed WHERE school_id = '{school_id}'"),
        what="the speed point",
    )
    assert len(speed) == 1
    point = speed[0]
    assert point["result"] == "success"
    assert point["result_code"] == 0
    assert round(point["download_mbps"], 2) == printed_download
    assert point["upload_mbps"] > 0
    assert point["bytes_received"] > 0
    assert point["server_kind"] == "self_hosted"
    assert point["meets_threshold"] == 1


def test_agent_once_status_carries_host_health(
    collector: Process, agent_env: dict[str, str], database: Influx, school_id: str
) -> None:
    assert run_agent("run", "--once", env=agent_env).returncode == 0

    rows = wait_for(
        lambda: database.rows(
            f"SELECT * FROM agent WHERE school_id = '{school_id}' AND status = 'online'"
        ),
        what="the online status point",
    )
    status = rows[0]
    assert status["online"] == 1
    assert status["reason"] == "started"
    for field in HostHealth.model_fields:
        if field != "temperature_c":  # only where the hardware has a sensor
            assert status[field] is not None, field
    assert 0 <= status["cpu_percent"] <= 100
    assert status["disk_free_bytes"] > 0
    assert status["uptime_s"] > 0
    offline = wait_for(
        lambda: database.rows(
            f"SELECT * FROM agent WHERE school_id = '{school_id}' AND status = 'offline'"
        ),
        what="the final offline status",
    )
    assert offline[0]["reason"] == "stopped"


def test_agent_once_fails_clearly_when_the_broker_is_unreachable(
    agent_env: dict[str, str],
) -> None:
    env = agent_env | {"SCHOOL_AGENT_MQTT__URL": f"mqtt://127.0.0.1:{free_port()}"}
    result = run_agent("run", "--once", env=env)

    assert result.returncode == 3
    assert "cannot connect to broker" in result.stderr
    assert "check mqtt.url" in result.stderr


@pytest.fixture
def dead_letters(collector_env: dict[str, str], broker: Mosquitto) -> Iterator[TopicListener]:
    topic = collector_env["SCHOOL_COLLECTOR_MQTT__DEAD_LETTER_TOPIC"]
    listener = TopicListener(broker.port, topic)
    yield listener
    listener.close()


def test_invalid_payload_reaches_the_dead_letter_topic_and_collector_keeps_running(
    collector: Process,
    dead_letters: TopicListener,
    broker: Mosquitto,
    database: Influx,
    topic_root: str,
    school_id: str,
) -> None:
    with SchoolPublisher(broker.port, topic_root, school_id) as school:
        school.publish_raw("speed", b'{"schema_version": 1, "download_mbps": ')
        school.publish_raw("speed", json.dumps({"schema_version": 1}).encode())
        school.publish_speed(download_mbps=42.5)
    received = wait_for(
        lambda: dead_letters.snapshot() if len(dead_letters.snapshot()) >= 2 else None
    )

    by_reason = {letter["reason"]: letter for letter in received}
    assert set(by_reason) == {"invalid_json", "schema_violation"}
    assert by_reason["invalid_json"]["payload"] == '{"schema_version": 1, "download_mbps": '
    assert by_reason["invalid_json"]["topic"] == f"{topic_root}/{school_id}/speed"
    detail = by_reason["schema_violation"]["detail"]
    assert detail.startswith("missing fields: ")
    assert set(detail.removeprefix("missing fields: ").split(", ")) == {
        "school_id",
        "agent_id",
        "result",
        "result_code",
        "threshold_mbps",
    }
    assert collector.running()
    stored = wait_for(lambda: database.rows("SELECT download_mbps FROM speed"))
    assert [row["download_mbps"] for row in stored] == [42.5]

    def counted() -> list[dict[str, object]] | None:
        rows = database.rows("SELECT last(count) FROM collector_rejections GROUP BY reason")
        return rows if len(rows) >= 2 else None  # counters are written every second

    rejections = wait_for(counted, what="both rejection counters")
    assert {row["reason"]: row["last"] for row in rejections} == {
        "invalid_json": 1,
        "schema_violation": 1,
    }


def test_school_posing_as_another_is_rejected(
    collector: Process,
    dead_letters: TopicListener,
    broker: Mosquitto,
    database: Influx,
    topic_root: str,
    school_id: str,
) -> None:
    with SchoolPublisher(broker.port, topic_root, school_id) as school:
        school.publish_speed(download_mbps=99.0, claimed_school="KZ-OTHER-1")
        school.publish_speed(download_mbps=10.0)
    received = wait_for(dead_letters.snapshot)

    assert received[0]["reason"] == "school_mismatch"
    stored = wait_for(lambda: database.rows("SELECT school_id, download_mbps FROM speed"))
    assert [(r["school_id"], r["download_mbps"]) for r in stored] == [(school_id, 10.0)]


def test_collector_restart_loses_nothing_the_broker_acknowledged(
    collector_env: dict[str, str],
    broker: Mosquitto,
    database: Influx,
    topic_root: str,
    school_id: str,
    tmp_path: Path,
) -> None:
    process = start_collector(collector_process(tmp_path, command_env(**collector_env)))
    acknowledged: list[SpeedReport] = []
    with SchoolPublisher(broker.port, topic_root, school_id) as school:
        for round_ in range(3):
            acknowledged += school.publish_speeds(100)
            if round_ == 0:
                process.kill()  # SIGKILL: whatever it held unacknowledged must come again
            elif round_ == 1:
                start_collector(process)
                acknowledged += school.publish_speeds(100)
                process.stop()  # a graceful stop, while the agent keeps publishing
        start_collector(process)
    try:
        expected = {report.message_id for report in acknowledged}
        wait_for(
            lambda: database.count("speed") >= len(expected),
            timeout=60,
            what=f"{len(expected)} speed points",
        )
        stored = database.rows("SELECT message_id FROM speed")
        assert len(stored) == len(expected) == 400
        assert {row["message_id"] for row in stored} == expected
    finally:
        process.stop()


def _agent_daemon(agent_env: dict[str, str], run_dir: Path) -> Process:
    env = command_env(**agent_env) | {"SCHOOL_AGENT_STATUS_INTERVAL_S": "5"}
    return Process("agent", [sys.executable, "-m", "agent", "run"], run_dir, env)


def _statuses(database: Influx, school_id: str) -> list[dict[str, object]]:
    return database.rows(
        f"SELECT status, reason, online FROM agent WHERE school_id = '{school_id}'"
    )


def test_agent_killed_is_marked_offline_by_its_last_will(
    collector: Process,
    agent_env: dict[str, str],
    database: Influx,
    school_id: str,
    tmp_path: Path,
) -> None:
    agent = _agent_daemon(agent_env, tmp_path)
    agent.start()
    wait_for(lambda: _statuses(database, school_id), what="the daemon's online status")
    agent.kill()  # SIGKILL: no goodbye, the broker fires the Last Will

    rows = wait_for(
        lambda: [r for r in _statuses(database, school_id) if r["status"] == "offline"],
        what="the Last Will's offline status",
    )
    assert rows[0]["reason"] == "connection_lost"
    assert rows[0]["online"] == 0
    latest = database.rows(f"SELECT last(online) FROM agent WHERE school_id = '{school_id}'")
    assert latest[0]["last"] == 0, "the will must be stored as the newest status"


def test_agent_stopped_gracefully_says_so(
    collector: Process,
    agent_env: dict[str, str],
    database: Influx,
    school_id: str,
    tmp_path: Path,
) -> None:
    agent = _agent_daemon(agent_env, tmp_path)
    agent.start()
    online = wait_for(lambda: _statuses(database, school_id), what="the online status")
    agent.stop()  # SIGTERM

    rows = wait_for(
        lambda: [r for r in _statuses(database, school_id) if r["status"] == "offline"],
        what="the offline status",
    )
    assert online[0]["reason"] == "started"
    assert [r["reason"] for r in rows] == ["stopped"]


def test_collector_on_the_v2_api_stores_the_agents_measurement(
    collector_env: dict[str, str],
    agent_env: dict[str, str],
    influxdb: InfluxDB,
    database: Influx,
    school_id: str,
    tmp_path: Path,
) -> None:
    with V2WriteShim(influxdb.port) as shim:
        env = collector_env | {
            "SCHOOL_COLLECTOR_INFLUX__URL": shim.url,
            "SCHOOL_COLLECTOR_INFLUX__API": "v2",
            "SCHOOL_COLLECTOR_INFLUX__DATABASE": f"{database.database}/autogen",
            "SCHOOL_COLLECTOR_INFLUX__ORG": "-",
            "SCHOOL_COLLECTOR_INFLUX__TOKEN": "collector:unused-without-auth",
        }
        process = start_collector(collector_process(tmp_path, command_env(**env)))
        try:
            result = run_agent("run", "--once", env=agent_env)
            assert result.returncode == 0, result.stderr
            rows = wait_for(
                lambda: database.rows(
                    f"SELECT download_mbps FROM speed WHERE school_id = '{school_id}'"
                ),
                what="the speed point written through /api/v2/write",
            )
        finally:
            process.stop()
        assert shim.requests >= 1
    assert round(rows[0]["download_mbps"], 2) == parse_figure(result.stdout, "Download")
