"""Safety devices through the real agent, broker, collector and InfluxDB.

Simulated devices on loopback: a TCP device that goes down and restarts, a
flapping one, a slow HTTP one, and an alarm panel whose heartbeats have gaps.
Timings are shortened (checks every second) so that each rule shows in seconds.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from localstack import Process, free_port

from tests.support.device_sims import HeartbeatSender, HttpDevice, TcpDevice, send_heartbeat
from tests.support.services import Influx, run_agent, wait_for

TOKEN = "panel-token-0123456789"
FAST: dict[str, Any] = {
    "period_s": 1,
    "grace_s": 2,
    "timeout_s": 0.5,
    "down_after": 3,
    "up_after": 2,
}


def _gate(device: TcpDevice) -> dict[str, Any]:
    """The turnstile at the gate, checked over TCP."""
    return {"id": "gate", "kind": "turnstile", "label": "Gate", "check": "tcp",
            "address": device.address}  # fmt: skip


def _far_window() -> str:
    """A speed-test window half a day away: no speed test runs during the test."""
    hour = (datetime.now(UTC) + timedelta(hours=12)).hour
    return json.dumps([f"{hour:02d}:00-{hour:02d}:30"])


@pytest.fixture
def start_agent(
    agent_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[list[dict[str, Any]]], tuple[Process, str]]]:
    """Start ``school-agent run`` watching ``devices``; returns it and its heartbeat URL."""
    started: list[Process] = []
    port = free_port()

    def start(devices: list[dict[str, Any]]) -> tuple[Process, str]:
        env = agent_env | {
            "SCHOOL_AGENT_DEVICES": json.dumps(devices),
            "SCHOOL_AGENT_DEVICE_REPORT_INTERVAL_S": "5",
            "SCHOOL_AGENT_STATUS_INTERVAL_S": "5",
            "SCHOOL_AGENT_HEARTBEAT__LISTEN": f"127.0.0.1:{port}",
            "SCHOOL_AGENT_SCHEDULE__STARTUP_TEST": "false",
            "SCHOOL_AGENT_SCHEDULE__WINDOWS": _far_window(),
            "SCHOOL_AGENT_SCHEDULE__TIMEZONE": "UTC",
        }
        process = Process("agent", [sys.executable, "-m", "agent", "run"], tmp_path, env)
        log_size = process.log_file.stat().st_size if process.log_file.exists() else 0
        process.start()
        started.append(process)

        def watching() -> bool:
            text = process.log_file.read_text()[log_size:]
            assert process.running(), f"the agent exited:\n{text}"
            return "watching" in text

        wait_for(watching, timeout=30, what="the agent to start watching its devices")
        return process, f"http://127.0.0.1:{port}/heartbeat/"

    yield start
    for process in started:
        process.stop()


def _states(database: Influx, school_id: str, device_id: str, *, changes: bool) -> list[str]:
    """The device's states in time order: change reports only, or every point."""
    where = f"school_id = '{school_id}'"
    rows = database.rows(f"SELECT state FROM device WHERE {where} AND device_id = '{device_id}'")
    if not changes:
        return [row["state"] for row in rows]
    # A change report's device points share its time with its device_report point.
    reports = database.rows(f"SELECT sequence FROM device_report WHERE {where} AND full = 0")
    changed_at = {row["time"] for row in reports}
    return [row["state"] for row in rows if row["time"] in changed_at]


def _latest(database: Influx, school_id: str, device_id: str) -> str | None:
    rows = database.rows(
        f"SELECT last(state) FROM device WHERE school_id = '{school_id}' "
        f"AND device_id = '{device_id}'"
    )
    return str(rows[0]["last"]) if rows else None


def _wait_state(
    database: Influx, school_id: str, device_id: str, state: str, timeout: float
) -> None:
    wait_for(
        lambda: _latest(database, school_id, device_id) == state,
        timeout=timeout,
        what=f"{device_id} {state} in InfluxDB",
    )


def test_every_state_transition_reaches_influxdb(
    collector: Process,
    start_agent: Callable[[list[dict[str, Any]]], tuple[Process, str]],
    database: Influx,
    school_id: str,
) -> None:
    gate = TcpDevice()
    flappy = TcpDevice(reply=b"PONG\n", flapping=True)
    slow = HttpDevice()
    slow.delay_s = 30  # never answers within its timeout
    devices = [
        _gate(gate) | FAST,
        {
            "id": "flappy",
            "kind": "police_link",
            "label": "Flaky link",
            "check": "tcp",
            "address": flappy.address,
            "send": "PING\\n",
            "expect": "PONG",
        }
        | FAST,
        {
            "id": "slow",
            "kind": "camera",
            "label": "Slow camera",
            "check": "http",
            "url": slow.url,
            "period_s": 5,
            "timeout_s": 4,
            "grace_s": 10,
        },
        {
            "id": "panel",
            "kind": "panic_button",
            "label": "Alarm panel",
            "check": "heartbeat",
            "token": TOKEN,
            "period_s": 1.5,
            "grace_s": 2,
            "down_after": 3,
            "up_after": 2,
        },
    ]
    _agent, heartbeat_url = start_agent(devices)
    panel = HeartbeatSender(heartbeat_url + "panel", TOKEN, interval_s=0.5)
    try:
        panel.start()
        for device_id in ("gate", "panel"):
            _wait_state(database, school_id, device_id, "up", timeout=30)

        # A slow device never delays the others: gate is checked every second meanwhile.
        connections = gate.connections
        time.sleep(6)
        assert gate.connections - connections >= 5
        assert slow.requests >= 1

        # The gate dies: down within period + grace + 10 s, through late.
        gate.stop()
        died = time.monotonic()
        _wait_state(database, school_id, "gate", "down", timeout=30)
        assert time.monotonic() - died <= 1 + 2 + 10
        # It restarts: up again (after two good checks).
        gate.start()
        _wait_state(database, school_id, "gate", "up", timeout=30)
        assert _states(database, school_id, "gate", changes=True) == ["up", "late", "down", "up"]

        # The panel's heartbeats stop for a while, then resume.
        panel.pause()
        paused = time.monotonic()
        _wait_state(database, school_id, "panel", "down", timeout=30)
        assert time.monotonic() - paused <= 1.5 + 2 + 10
        panel.start()
        _wait_state(database, school_id, "panel", "up", timeout=30)
        assert _states(database, school_id, "panel", changes=True) == ["up", "late", "down", "up"]

        # The slow camera went down on timeouts; the flapping link never did.
        _wait_state(database, school_id, "slow", "down", timeout=60)
        flaps = _states(database, school_id, "flappy", changes=True)
        assert "late" in flaps
        assert "down" not in _states(database, school_id, "flappy", changes=False)
        assert flappy.connections >= 6
    finally:
        panel.close()
        gate.stop()
        flappy.stop()
        slow.close()

    rows = database.rows(
        f"SELECT result, state, response_ms FROM device WHERE school_id = '{school_id}' "
        "AND device_id = 'slow' AND state = 'down'"
    )
    assert (rows[-1]["result"], rows[-1]["response_ms"]) == ("timeout", None)
    full = database.rows(
        f"SELECT sequence FROM device_report WHERE school_id = '{school_id}' AND full = 1"
    )
    assert {row["sequence"] for row in full} >= {0}  # the first full report, at start


def test_reports_are_numbered_without_gaps(
    collector: Process,
    start_agent: Callable[[list[dict[str, Any]]], tuple[Process, str]],
    database: Influx,
    school_id: str,
) -> None:
    gate = TcpDevice()
    try:
        start_agent([_gate(gate) | FAST])
        _wait_state(database, school_id, "gate", "up", timeout=30)
        gate.stop()
        _wait_state(database, school_id, "gate", "down", timeout=30)
        wait_for(
            lambda: (
                len(
                    database.rows(
                        f"SELECT * FROM device_report WHERE school_id = '{school_id}' AND full = 1"
                    )
                )
                >= 2
            ),
            timeout=15,
            what="a second full report",
        )
    finally:
        gate.stop()
    rows = database.rows(
        f"SELECT sequence, boot_id FROM device_report WHERE school_id = '{school_id}'"
    )
    sequences = sorted({row["sequence"] for row in rows})
    assert sequences == list(range(len(sequences)))
    assert len({row["boot_id"] for row in rows}) == 1
    collector_rows = database.rows('SELECT last("device_report_gaps") FROM "collector"')
    assert collector_rows[0]["last"] == 0


def test_a_lost_agent_makes_its_devices_stale_not_down_until_it_returns(
    collector: Process,
    start_agent: Callable[[list[dict[str, Any]]], tuple[Process, str]],
    database: Influx,
    school_id: str,
) -> None:
    gate = TcpDevice()
    devices = [
        _gate(gate) | FAST,
        {
            "id": "panel",
            "kind": "panic_button",
            "label": "Alarm panel",
            "check": "heartbeat",
            "token": TOKEN,
            "period_s": 60,
        },
    ]
    try:
        agent, _ = start_agent(devices)
        _wait_state(database, school_id, "gate", "up", timeout=30)
        agent.kill()  # a power cut: the broker publishes the agent's Last Will
        for device_id in ("gate", "panel"):
            _wait_state(database, school_id, device_id, "stale", timeout=30)
        stale = database.rows(
            f"SELECT * FROM device WHERE school_id = '{school_id}' AND state = 'stale'"
        )
        assert {(r["device_id"], r["kind"], r["up"], r["result"]) for r in stale} == {
            ("gate", "turnstile", 0, "agent_lost"),
            ("panel", "panic_button", 0, "agent_lost"),
        }
        assert "down" not in _states(database, school_id, "gate", changes=False)

        start_agent(devices)  # the agent returns, with a new boot id
        _wait_state(database, school_id, "gate", "up", timeout=30)
        assert _latest(database, school_id, "panel") == "unknown"  # no heartbeat since
        boots = database.rows(f"SELECT boot_id FROM device_report WHERE school_id = '{school_id}'")
        assert len({row["boot_id"] for row in boots}) == 2
        wait_for(
            lambda: (
                (database.rows('SELECT last("agent_restarts") FROM "collector"') or [{}])[0].get(
                    "last", 0
                )
                >= 1
            ),
            timeout=15,
            what="the collector to count the restart",
        )
    finally:
        gate.stop()


def test_unknown_devices_and_bad_tokens_are_counted_in_the_agent_status(
    collector: Process,
    start_agent: Callable[[list[dict[str, Any]]], tuple[Process, str]],
    database: Influx,
    school_id: str,
) -> None:
    _agent, url = start_agent(
        [
            {
                "id": "panel",
                "kind": "panic_button",
                "label": "Alarm panel",
                "check": "heartbeat",
                "token": TOKEN,
                "period_s": 60,
            }
        ]
    )
    wait_for(lambda: send_heartbeat(url + "panel", TOKEN) == 204, timeout=30, what="the endpoint")
    assert send_heartbeat(url + "ghost", TOKEN) == 404
    assert send_heartbeat(url + "panel", "not-the-token-at-all") == 401
    assert send_heartbeat(url + "panel", "not-the-token-at-all") == 401
    _wait_state(database, school_id, "panel", "up", timeout=30)

    def counted() -> dict[str, Any] | None:
        rows = database.rows(
            "SELECT last(heartbeats_accepted) AS accepted, last(heartbeats_unknown_device) AS "
            "unknown, last(heartbeats_bad_token) AS bad FROM agent "
            f"WHERE school_id = '{school_id}'"
        )
        return rows[0] if rows and rows[0]["bad"] == 2 else None

    row = wait_for(counted, timeout=20, what="the counts in the agent status")
    assert (row["accepted"], row["unknown"], row["bad"]) == (1, 1, 2)


def test_run_once_checks_devices_until_decided_and_stores_them(
    collector: Process, agent_env: dict[str, str], database: Influx, school_id: str
) -> None:
    gate = TcpDevice()
    refused = f"127.0.0.1:{free_port()}"
    devices = [
        _gate(gate),
        {
            "id": "panic-1",
            "kind": "panic_button",
            "label": "Panic",
            "check": "tcp",
            "address": refused,
            "grace_s": 1,
            "down_after": 2,
        },
    ]
    try:
        result = run_agent(
            "run", "--once", env=agent_env | {"SCHOOL_AGENT_DEVICES": json.dumps(devices)}
        )
    finally:
        gate.stop()
    assert result.returncode == 0, result.stderr
    assert re.search(r"^gate\s+turnstile\s+up\s+success", result.stdout, re.MULTILINE)
    assert re.search(
        r"^panic-1\s+panic_button\s+down\s+connection_refused", result.stdout, re.MULTILINE
    )
    rows = wait_for(
        lambda: database.rows(f"SELECT * FROM device WHERE school_id = '{school_id}'"),
        what="the device points",
    )
    assert {(r["device_id"], r["state"]) for r in rows} == {("gate", "up"), ("panic-1", "down")}
    reports = database.rows(f"SELECT * FROM device_report WHERE school_id = '{school_id}'")
    assert [(r["full"], r["devices"]) for r in reports] == [(1, 2)]  # one full list, decided


def test_the_devices_command_prints_a_table_and_fails_when_one_is_not_up() -> None:
    gate = TcpDevice()
    devices = [
        _gate(gate),
        {
            "id": "police",
            "kind": "police_link",
            "label": "Police",
            "check": "tcp",
            "address": f"127.0.0.1:{free_port()}",
            "down_after": 1,
        },
        {
            "id": "panel",
            "kind": "panic_button",
            "label": "Panel",
            "check": "heartbeat",
            "token": TOKEN,
        },
    ]
    try:
        result = run_agent("devices", env={"SCHOOL_AGENT_DEVICES": json.dumps(devices)})
    finally:
        gate.stop()
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["DEVICE", "KIND", "STATE", "RESULT", "MS", "DETAIL"]
    assert lines[1].split()[:4] == ["gate", "turnstile", "up", "success"]
    assert lines[2].split()[:4] == ["police", "police_link", "down", "connection_refused"]
    assert lines[3].split()[:4] == ["panel", "panic_button", "unknown", "not_checked"]
