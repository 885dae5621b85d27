"""Faults injected into real processes: every measurement ends up in InfluxDB exactly once.

Each case runs its own Mosquitto, InfluxDB and collector, and three load agents
(tests/support/load_agent.py: the agent's real publisher and outbox) that each
produce 150 speed results. While they publish, the case stops, kills and
restarts parts of the stack; then it counts: every result in InfluxDB, none
twice (0 lost, 0 duplicated), and every agent's outbox empty: the collector's
receipts confirmed everything it holds.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from localstack import InfluxDB, Mosquitto, Process, free_port

from collector.influx.v1 import V1Writer
from collector.settings import InfluxSettings
from tests.conftest import start_collector
from tests.support.services import REPO, Influx, collector_process, command_env, unique, wait_for
from tests.support.slow_reply import SlowReplyProxy

AGENTS = 3
PER_AGENT = 150
RATE = 30  # messages per second per agent: about 5 s of producing


@dataclass
class Stack:
    run_dir: Path
    broker: Mosquitto
    influxdb: InfluxDB
    database: Influx
    collector: Process
    root: str
    collector_env: dict[str, str]
    agents: dict[str, Process] = field(default_factory=dict)

    def start_agent(self, school_id: str) -> Process:
        argv = [
            sys.executable, "-m", "tests.support.load_agent",
            "--broker", self.broker.url, "--root", self.root, "--school", school_id,
            "--state-dir", str(self.run_dir / school_id), "--count", str(PER_AGENT),
            "--rate", str(RATE),
        ]  # fmt: skip
        process = Process(f"agent-{school_id}", argv, self.run_dir, {"PYTHONPATH": str(REPO)})
        process.start()
        self.agents[school_id] = process
        return process

    def produced(self, school_id: str) -> int:
        return self._log(school_id).count("\nstored ")

    def resent(self) -> int:
        """How many times the agents sent again what the broker acknowledged without receipt."""
        return sum(
            self._log(school).count("no receipt from the collector") for school in self.agents
        )

    def _log(self, school_id: str) -> str:
        log = self.agents[school_id].log_file
        return "\n" + log.read_text() if log.exists() else ""

    def wait_receipts_learned(self) -> None:
        """Every agent heard the collectors' announcement that receipts come."""
        wait_for(
            lambda: all("the collectors send receipts" in self._log(s) for s in self.agents),
            what="every agent to learn that receipts come",
        )

    def confirmed(self) -> int:
        """Messages the agents' outboxes removed on a receipt (their own counters)."""
        total = 0
        for school in self.agents:
            with contextlib.closing(sqlite3.connect(self.run_dir / school / "outbox.db")) as db:
                row = db.execute("SELECT value FROM counters WHERE name = 'confirmed'").fetchone()
            total += row[0] if row else 0
        return total

    def expected_ids(self) -> set[str]:
        return {
            uuid.uuid5(uuid.NAMESPACE_URL, f"{school}/{n}").hex
            for school in self.agents
            for n in range(PER_AGENT)
        }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    broker = Mosquitto(tmp_path / "mosquitto", free_port())
    influxdb = InfluxDB(tmp_path / "influxdb", free_port(), free_port())
    broker.start()
    influxdb.start()
    database = Influx(influxdb.url, "faults")
    V1Writer(InfluxSettings(url=influxdb.url, database="faults")).ensure_database()
    root = unique("t-") + "/schools"
    env = command_env(
        SCHOOL_COLLECTOR_MQTT__URL=broker.url,
        SCHOOL_COLLECTOR_MQTT__CLIENT_ID=unique("collector-"),
        SCHOOL_COLLECTOR_MQTT__TOPIC_ROOT=root,
        SCHOOL_COLLECTOR_INFLUX__URL=influxdb.url,
        SCHOOL_COLLECTOR_INFLUX__DATABASE="faults",
        SCHOOL_COLLECTOR_STATS_INTERVAL_S="5",
        SCHOOL_COLLECTOR_BATCH__MAX_WAIT_S="0.2",
        SCHOOL_COLLECTOR_BATCH__RETRY_INITIAL_S="0.2",
        SCHOOL_COLLECTOR_BATCH__RETRY_MAX_S="1",
    )
    collector = start_collector(collector_process(tmp_path, env))
    stack = Stack(tmp_path, broker, influxdb, database, collector, root, env)
    yield stack
    for process in stack.agents.values():
        process.kill()
    collector.stop()
    influxdb.stop()
    broker.stop()


def _start_agents(stack: Stack) -> list[str]:
    schools = [unique("KZ-") for _ in range(AGENTS)]
    for school in schools:
        stack.start_agent(school)
    return schools


def _when_produced(stack: Stack, school: str, share: float) -> None:
    """Wait until ``school``'s agent stored ``share`` of its results."""
    wait_for(
        lambda: stack.produced(school) >= share * PER_AGENT,
        timeout=60,
        what=f"{share:.0%} of {school}'s results",
    )


def _assert_exactly_once(stack: Stack) -> None:
    expected = stack.expected_ids()

    def stored() -> int:
        try:
            return stack.database.count("speed")
        except Exception:  # noqa: BLE001 - InfluxDB may still be starting
            return 0

    wait_for(lambda: stored() >= len(expected), timeout=180, what=f"{len(expected)} points")
    time.sleep(1)  # anything late (a duplicate) would show now
    rows = stack.database.rows("SELECT message_id FROM speed")
    ids = [row["message_id"] for row in rows]
    assert len(ids) == len(expected) == AGENTS * PER_AGENT  # 0 lost, 0 duplicated
    assert set(ids) == expected
    wait_for(  # the receipts came: nothing waits to be sent again
        lambda: all("\ndone\n" in stack._log(school) for school in stack.agents),
        timeout=120,
        what="every agent's outbox to empty",
    )


def test_broker_stopped_then_restarted(stack: Stack) -> None:
    schools = _start_agents(stack)
    _when_produced(stack, schools[0], 0.3)
    stack.broker.stop()  # agents keep measuring into their outboxes
    time.sleep(3)
    stack.broker.start()
    _assert_exactly_once(stack)


def test_collector_killed_mid_batch_then_restarted(stack: Stack) -> None:
    schools = _start_agents(stack)
    _when_produced(stack, schools[0], 0.3)
    stack.collector.kill()
    time.sleep(2)
    start_collector(stack.collector)
    _assert_exactly_once(stack)


def test_influxdb_stopped_then_restarted(stack: Stack) -> None:
    schools = _start_agents(stack)
    _when_produced(stack, schools[0], 0.3)
    stack.influxdb.stop()
    time.sleep(4)
    stack.influxdb.start()
    _assert_exactly_once(stack)


def test_agent_killed_mid_publish_then_restarted(stack: Stack) -> None:
    schools = _start_agents(stack)
    _when_produced(stack, schools[0], 0.4)
    stack.agents[schools[0]].kill()  # SIGKILL: its outbox on disk is all that is left
    time.sleep(1)
    stack.start_agent(schools[0])
    _assert_exactly_once(stack)


def test_everything_fails_while_agents_publish(stack: Stack) -> None:
    schools = _start_agents(stack)
    _when_produced(stack, schools[0], 0.2)
    stack.collector.kill()
    stack.agents[schools[1]].kill()
    stack.broker.stop()
    stack.influxdb.stop()
    time.sleep(2)
    stack.broker.start()
    stack.start_agent(schools[1])
    time.sleep(1)
    start_collector(stack.collector)
    time.sleep(2)
    stack.influxdb.start()
    _when_produced(stack, schools[2], 0.8)
    stack.agents[schools[2]].kill()
    stack.start_agent(schools[2])
    _assert_exactly_once(stack)


def test_collectors_sharing_the_subscription_lose_nothing_when_one_is_killed(
    stack: Stack,
) -> None:
    """Two collectors on one MQTT shared subscription: one is killed mid-stream, restarted."""
    stack.collector.stop()
    shared = []
    ids = [unique(f"collector-{number}-") for number in range(2)]
    for number in range(2):
        env = stack.collector_env | {
            "SCHOOL_COLLECTOR_MQTT__CLIENT_ID": ids[number],
            "SCHOOL_COLLECTOR_MQTT__SHARE_GROUP": "collectors",
        }
        shared.append(
            start_collector(collector_process(stack.run_dir, env, name=f"collector-{number}"))
        )
    try:
        schools = _start_agents(stack)
        _when_produced(stack, schools[0], 0.3)
        shared[0].kill()  # what it held unacknowledged waits in its session on the broker
        time.sleep(2)
        start_collector(shared[0])
        _assert_exactly_once(stack)

        def shares() -> list[dict[str, object]] | None:
            rows = stack.database.rows(
                'SELECT max("stored") FROM "collector" GROUP BY "collector_id"'
            )
            mine = [row for row in rows if row["collector_id"] in ids]
            return mine if len(mine) == 2 and all(row["max"] for row in mine) else None

        wait_for(shares, timeout=30, what="both collectors to have stored a share")
    finally:
        for process in shared:
            process.stop()


def test_the_broker_killed_without_saving_again_and_again_loses_nothing(stack: Stack) -> None:
    """SIGKILL: Mosquitto's queue since its last autosave is gone, PUBACKs and all."""
    schools = _start_agents(stack)
    stack.wait_receipts_learned()
    stack.collector.stop()  # what the agents publish now waits in the broker's memory
    for share in (0.35, 0.6, 0.85):
        _when_produced(stack, schools[0], share)
        stack.broker.kill()  # well within autosave_interval (30 s): nothing was written
        time.sleep(1)
        stack.broker.start()
    start_collector(stack.collector)
    _assert_exactly_once(stack)
    assert stack.resent() > 0  # what the broker had acknowledged and lost was sent again


def test_the_collector_killed_after_a_write_before_its_receipts(
    stack: Stack, tmp_path: Path
) -> None:
    """InfluxDB's answers arrive 2 s late, so the collector dies between write and receipt."""
    slow = SlowReplyProxy(stack.influxdb.port, delay_s=2.0)
    stack.collector.stop()
    stack.collector.env["SCHOOL_COLLECTOR_INFLUX__URL"] = slow.url
    try:
        start_collector(stack.collector)
        schools = _start_agents(stack)
        stack.wait_receipts_learned()
        _when_produced(stack, schools[0], 0.5)
        wait_for(lambda: stack.database.count("speed") > stack.confirmed(), what="a write")
        stack.collector.kill()
        time.sleep(1)  # receipts on their way have arrived
        assert stack.database.count("speed") > stack.confirmed()  # stored, never confirmed
        start_collector(stack.collector)
        _assert_exactly_once(stack)
    finally:
        slow.close()
