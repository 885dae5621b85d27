"""Real services for tests: processes of our own commands, polling, a dead-letter listener."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
from localstack import Process
from paho.mqtt.enums import CallbackAPIVersion

from collector.influx.query import InfluxQL
from collector.settings import InfluxSettings

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def command_env(**settings: str) -> dict[str, str]:
    """This environment without any SCHOOL_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOL_")}
    return env | settings


def collector_process(run_dir: Path, env: dict[str, str], name: str = "collector") -> Process:
    return Process(name, [sys.executable, "-m", "collector", "run"], run_dir, env)


def run_agent(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=command_env() | env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def parse_figure(output: str, label: str) -> float:
    match = re.search(rf"^{label}\s+([0-9.]+)", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return float(match[1])


class Influx:
    """InfluxQL against one database of the test InfluxDB."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self.client = InfluxQL(InfluxSettings(url=url, database=database))

    def rows(self, influxql: str) -> list[dict[str, Any]]:
        return [row for series in self.client.query(influxql) for row in series.rows()]

    def count(self, measurement: str, field: str = "message_id") -> int:
        rows = self.rows(f'SELECT count("{field}") FROM "{measurement}"')
        return int(rows[0]["count"]) if rows else 0


def collector_cli(
    database: Influx, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``school-collector ARGS`` on ``database``, plus ``SCHOOL_COLLECTOR_*`` ``settings``."""
    env = command_env(
        SCHOOL_COLLECTOR_INFLUX__URL=database.url,
        SCHOOL_COLLECTOR_INFLUX__DATABASE=database.database,
        **settings,
    )
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


class TopicListener:
    """Subscribes a topic (wildcards allowed) on a real broker and keeps what arrives."""

    def __init__(self, broker_port: int, topic: str) -> None:
        self.letters: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("listener-"))
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.connect("127.0.0.1", broker_port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError(f"could not subscribe to {topic}")

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.letters.append(json.loads(message.payload))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.letters)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
