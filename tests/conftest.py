"""Fixtures: a real Mosquitto, a real InfluxDB, a real speed server, our own processes.

The broker and the database start once per session on free loopback ports
through deploy/localstack.py, the same code the demo uses. Each test gets
its own topic root, database and client ids, so tests never see each
other's data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from localstack import InfluxDB, Mosquitto, Process, ensure_installed, free_port

from agent.publisher import Publisher
from collector.influx.v1 import V1Writer
from collector.settings import InfluxSettings
from collector.speed_server import SpeedServer
from tests.support.services import Influx, collector_process, command_env, unique, wait_for


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell must not leak settings into a test."""
    for name in list(os.environ):
        if name.startswith(("SCHOOL_AGENT_", "SCHOOL_COLLECTOR_")) or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_installed()
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def broker(services_dir: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(services_dir / "mosquitto", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influxdb(services_dir: Path) -> Iterator[InfluxDB]:
    server = InfluxDB(services_dir / "influxdb", free_port(), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database(influxdb: InfluxDB) -> Influx:
    name = unique("db_")
    V1Writer(InfluxSettings(url=influxdb.url, database=name)).ensure_database()
    return Influx(influxdb.url, name)


@pytest.fixture(scope="session")
def speed_server() -> Iterator[SpeedServer]:
    server = SpeedServer()
    server.start_in_background()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def topic_root() -> str:
    return unique("t-") + "/schools"


def capabilities_topic(topic_root: str) -> str:
    """A test's own topic for the collectors' announcement of receipts, beside its root."""
    return topic_root.split("/", maxsplit=1)[0] + "/capabilities"


@pytest.fixture
def school_id() -> str:
    return unique("KZ-")


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    """Publishers a test starts, closed after it: append each one made."""
    made: list[Publisher] = []
    yield made
    for publisher in made:
        publisher.close()


@pytest.fixture
def collector_env(broker: Mosquitto, database: Influx, topic_root: str) -> dict[str, str]:
    return {
        "SCHOOL_COLLECTOR_MQTT__URL": broker.url,
        "SCHOOL_COLLECTOR_MQTT__CLIENT_ID": unique("collector-"),
        "SCHOOL_COLLECTOR_MQTT__TOPIC_ROOT": topic_root,
        "SCHOOL_COLLECTOR_MQTT__DEAD_LETTER_TOPIC": topic_root.split("/", maxsplit=1)[0]
        + "/dead-letter",
        # Its own announcement of receipts: the broker is shared by every test.
        "SCHOOL_COLLECTOR_MQTT__CAPABILITIES_TOPIC": capabilities_topic(topic_root),
        "SCHOOL_COLLECTOR_INFLUX__URL": database.url,
        "SCHOOL_COLLECTOR_INFLUX__DATABASE": database.database,
        "SCHOOL_COLLECTOR_STATS_INTERVAL_S": "1",
        "SCHOOL_COLLECTOR_BATCH__MAX_WAIT_S": "0.2",
        "SCHOOL_COLLECTOR_BATCH__RETRY_INITIAL_S": "0.2",
        "SCHOOL_COLLECTOR_BATCH__RETRY_MAX_S": "1",
    }


def start_collector(process: Process) -> Process:
    """Start and wait until its subscription is acknowledged (messages before it are lost)."""
    log_size = process.log_file.stat().st_size if process.log_file.exists() else 0
    process.start()
    wait_for(
        lambda: (
            process.log_file.exists() and "subscribed to" in process.log_file.read_text()[log_size:]
        ),
        timeout=30,
        what=f"the collector to subscribe (log: {process.log_file})",
    )
    return process


@pytest.fixture
def collector(collector_env: dict[str, str], tmp_path: Path) -> Iterator[Process]:
    process = collector_process(tmp_path, command_env(**collector_env))
    start_collector(process)
    yield process
    process.stop()


@pytest.fixture
def agent_env(
    broker: Mosquitto, speed_server: SpeedServer, topic_root: str, school_id: str, tmp_path: Path
) -> dict[str, str]:
    return {
        "SCHOOL_AGENT_SCHOOL_ID": school_id,
        "SCHOOL_AGENT_MQTT__URL": broker.url,
        "SCHOOL_AGENT_MQTT__TOPIC_ROOT": topic_root,
        "SCHOOL_AGENT_MQTT__CAPABILITIES_TOPIC": capabilities_topic(topic_root),
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "agent-state"),
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url,
    }
