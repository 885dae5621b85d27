"""A school's uplink cut, then its router gone, then its DNS failing: three outages, each
with its cause, each within one check interval of the truth.

The agent's connectivity checks run in a school namespace of a test network
(tests/support/school_network.py): a router namespace and an upstream with a
service and a DNS server. Nothing leaves this machine.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from localstack import Mosquitto, free_port

from tests.conftest import start_collector
from tests.support.school_network import BROKER_NAME, HOST_IP, SERVICE_PORT, SchoolNetwork
from tests.support.services import REPO, Influx, collector_process, command_env, wait_for

INTERVAL_S = 5.0
FAULT_S = 15.0  # each outage (three rounds); three minutes in the field, shortened here


@pytest.mark.timeout(240)
def test_each_outage_is_recorded_with_its_cause_within_one_interval(tmp_path: Path) -> None:
    with SchoolNetwork() as network:
        runner = subprocess.Popen(
            ["ip", "netns", "exec", network.school, sys.executable, "-m",
             "tests.support.connectivity_runner", "--interval", str(INTERVAL_S),
             "--ledger", str(tmp_path / "connectivity.json"), "--seconds", "150",
             "--tcp", f"{BROKER_NAME}:{SERVICE_PORT}", "--dns", BROKER_NAME],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        truth: list[tuple[str, float, float]] = []
        try:
            time.sleep(2 * INTERVAL_S)
            for cause, fault in (
                ("upstream", network.uplink),
                ("gateway", network.router),
            ):
                began = time.time()
                fault(up=False)
                time.sleep(FAULT_S)
                fault(up=True)
                truth.append((cause, began, time.time()))
                time.sleep(2 * INTERVAL_S)
            began = time.time()
            network.dns_down()
            time.sleep(FAULT_S)
            network.dns_up()
            truth.append(("dns", began, time.time()))
            time.sleep(2 * INTERVAL_S)
        finally:
            runner.terminate()
            out, _ = runner.communicate(timeout=30)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    outages = [line["outage"] for line in lines if "outage" in line]
    rounds = [(line["round"], line["cause"]) for line in lines if "round" in line]
    assert [o["cause"] for o in outages] == [cause for cause, _, _ in truth], rounds
    for outage, (cause, began, ended) in zip(outages, truth, strict=True):
        assert 0 <= outage["start"] - began <= INTERVAL_S, (cause, outage, began)
        assert -1 <= outage["end"] - ended <= INTERVAL_S, (cause, outage, ended)
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(rounds)]
    assert max(gaps) <= INTERVAL_S + 0.5  # a round never took longer than its interval


REPORT_S = 60  # connectivity.report_s: a count a minute, not an hour, to see them stored
UPLINK_CUT_S, DNS_DOWN_S = 30.0, 20.0


@pytest.mark.timeout(420)
def test_outages_reach_influxdb_once_the_link_returns_with_the_time_down_they_had(
    tmp_path: Path, database: Influx, collector_env: dict[str, str], school_id: str
) -> None:
    """The real agent in the school namespace, its broker on this machine behind the
    school's router: the uplink cut, then DNS failing. Each outage is published once the
    link is back and stored with its cause and times; the counts stored add up to the time
    down that the test made."""
    with SchoolNetwork(host_link=True) as network:
        port, inside = free_port(), free_port()
        broker = Mosquitto(
            tmp_path / "broker", port,
            listeners=f"listener {port} 127.0.0.1\nlistener {inside} {HOST_IP}\n"
            "allow_anonymous true",
        )  # fmt: skip
        broker.start()
        collector = collector_process(
            tmp_path, command_env(**collector_env | {"SCHOOL_COLLECTOR_MQTT__URL": broker.url})
        )
        start_collector(collector)
        agent = _agent_in(network, tmp_path, collector_env, school_id, inside)
        truth: list[tuple[str, float, float]] = []
        try:
            wait_for(lambda: database.count("agent", "online"), timeout=60, what="its status")
            time.sleep(2 * INTERVAL_S)
            began = time.time()
            network.uplink(up=False)
            time.sleep(UPLINK_CUT_S)
            network.uplink(up=True)
            truth.append(("upstream", began, time.time()))
            time.sleep(3 * INTERVAL_S)
            began = time.time()
            network.dns_down()
            time.sleep(DNS_DOWN_S)
            network.dns_up()
            truth.append(("dns", began, time.time()))
            outages = wait_for(
                lambda: _outages(database, after=began - 1), timeout=60, what="the outages stored"
            )
            last_period = (
                truth[-1][2] // REPORT_S + 1
            ) * REPORT_S  # the one the DNS fault ended in
            time.sleep(max(0.0, last_period + INTERVAL_S - time.time()))
            counts = wait_for(
                lambda: _counts_through(database, last_period), timeout=60,
                what="the minute counts through the last fault",
            )  # fmt: skip
        finally:
            agent.terminate()
            agent.wait(timeout=30)
            collector.stop()
            broker.stop()
    for cause, began, ended in truth:
        (row,) = [o for o in outages if o["cause"] == cause and _start(o) >= began - 1]
        assert 0 <= _start(row) - began <= INTERVAL_S, (cause, row, began)
        assert -1 <= row["ended_at_ms"] / 1000 - ended <= INTERVAL_S, (cause, row, ended)
    # A round that spans the uplink's return can find the service back but not yet the
    # name (its lookup timed out first): one interval blamed on DNS, and no more.
    blips = [o for o in outages if o["cause"] == "dns" and _start(o) < truth[1][1] - 1]
    assert all(o["duration_s"] <= INTERVAL_S + 1 for o in blips), blips
    down = {cause: ended - began for cause, began, ended in truth}
    assert abs(counts["down_upstream_s"] - down["upstream"]) <= 2 * INTERVAL_S, counts
    assert abs(counts["down_dns_s"] - down["dns"]) <= 2 * INTERVAL_S, counts
    assert counts["down_gateway_s"] == counts["down_no_route_s"] == 0
    failed = counts["checks"] - counts["passed"]
    assert failed * INTERVAL_S == counts["down_upstream_s"] + counts["down_dns_s"]


def _agent_in(
    network: SchoolNetwork, tmp_path: Path, collector_env: dict[str, str], school_id: str,
    port: int,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """``school-agent run`` in the school namespace, checking every INTERVAL_S."""
    away = "20:00-21:00" if datetime.now(UTC).hour < 12 else "02:00-03:00"  # no speed test
    env = command_env(
        SCHOOL_AGENT_SCHOOL_ID=school_id,
        SCHOOL_AGENT_MQTT__URL=f"mqtt://{BROKER_NAME}:{port}",
        SCHOOL_AGENT_MQTT__TOPIC_ROOT=collector_env["SCHOOL_COLLECTOR_MQTT__TOPIC_ROOT"],
        SCHOOL_AGENT_MQTT__CAPABILITIES_TOPIC=collector_env[
            "SCHOOL_COLLECTOR_MQTT__CAPABILITIES_TOPIC"
        ],
        SCHOOL_AGENT_STATE_DIR=str(tmp_path / "agent-state"),
        SCHOOL_AGENT_CONNECTIVITY__INTERVAL_S=str(INTERVAL_S),
        SCHOOL_AGENT_CONNECTIVITY__REPORT_S=str(REPORT_S),
        SCHOOL_AGENT_SCHEDULE__STARTUP_TEST="false",
        SCHOOL_AGENT_SCHEDULE__WINDOWS=json.dumps([away]),
        SCHOOL_AGENT_SCHEDULE__TIMEZONE="UTC",
        SCHOOL_AGENT_CLOCK__HOLD_UNSYNCED="false",
    )
    log = (tmp_path / "agent.log").open("wb")
    return subprocess.Popen(
        ["ip", "netns", "exec", network.school, sys.executable, "-m", "agent", "run"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _start(row: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(row["time"])).timestamp()


def _outages(database: Influx, after: float) -> list[dict[str, Any]] | None:
    """The stored outages, once one of DNS that began ``after`` is among them."""
    found = database.rows('SELECT * FROM "outage"')
    if any(o["cause"] == "dns" and _start(o) >= after for o in found):
        return found
    return None


def _counts_through(database: Influx, until: float) -> dict[str, float] | None:
    """The stored minute counts, summed, once the minute before ``until`` is among them."""
    rows = database.rows('SELECT * FROM "connectivity"')
    if not rows or max(datetime.fromisoformat(r["time"]).timestamp() for r in rows) < until - 60:
        return None
    names = ("checks", "passed", "down_upstream_s", "down_dns_s", "down_gateway_s",
             "down_no_route_s")  # fmt: skip
    return {name: sum(row[name] for row in rows) for name in names}
