"""A school as the broker sees it: a real paho client publishing contract messages.

Tests use it where they need what the agent never sends: raw bytes, another
school's id, hundreds of messages at once.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import (
    SPEED_RESULT_CODES,
    HostHealth,
    ServerKind,
    SpeedReport,
    SpeedResult,
    SpeedServer,
    TopicKind,
    topic_for,
)


def speed_report(
    school_id: str, agent_id: str, download_mbps: float, measured_at: datetime
) -> SpeedReport:
    """A successful test as an agent would report it."""
    return SpeedReport(
        school_id=school_id,
        agent_id=agent_id,
        measured_at=measured_at,
        result=SpeedResult.SUCCESS,
        result_code=SPEED_RESULT_CODES[SpeedResult.SUCCESS],
        threshold_mbps=20.0,
        download_mbps=download_mbps,
        upload_mbps=download_mbps / 2,
        latency_ms=12.5,
        jitter_ms=1.5,
        meets_threshold=download_mbps >= 20.0,
        bytes_received=1000,
        bytes_sent=500,
        duration_s=10.0,
        server=SpeedServer(kind=ServerKind.SELF_HOSTED, id="test", name="test", url="http://x"),
    )


class SchoolPublisher:
    def __init__(
        self,
        broker_port: int,
        topic_root: str,
        school_id: str,
        *,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """Anonymous on plain MQTT; with ``password``, as the school's account (over TLS
        to ``localhost`` with ``ca_file``)."""
        self.topic_root = topic_root
        self.school_id = school_id
        self.agent_id = uuid.uuid4().hex
        self._acked: set[int] = set()
        self._changed = threading.Condition()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv5,
        )
        self._client.on_publish = self._on_publish
        self._client.max_queued_messages_set(0)
        if password is not None:
            self._client.username_pw_set(school_id, password)
        if ca_file is not None:
            self._client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
        self._client.connect("localhost" if ca_file else "127.0.0.1", broker_port)
        self._client.loop_start()
        self._base = datetime.now(UTC) - timedelta(hours=1)
        self._sequence = 0

    def __enter__(self) -> SchoolPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self._changed:
            self._acked.add(mid)
            self._changed.notify_all()

    def _wait(self, mids: list[int], timeout: float = 30.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: set(mids) <= self._acked, timeout):
                raise AssertionError(f"broker did not acknowledge {len(mids)} messages")

    def publish_raw(self, kind: str, payload: bytes) -> None:
        info = self._client.publish(f"{self.topic_root}/{self.school_id}/{kind}", payload, qos=1)
        self._wait([info.mid])

    def speed_report(self, download_mbps: float, claimed_school: str | None = None) -> SpeedReport:
        self._sequence += 1
        at = self._base + timedelta(milliseconds=self._sequence)
        return speed_report(claimed_school or self.school_id, self.agent_id, download_mbps, at)

    def publish_speed(self, download_mbps: float, claimed_school: str | None = None) -> SpeedReport:
        report = self.speed_report(download_mbps, claimed_school)
        self.publish_raw("speed", report.model_dump_json().encode())
        return report

    def publish_speeds(self, count: int) -> list[SpeedReport]:
        """``count`` reports with QoS 1; returns once the broker acknowledged them all."""
        reports = [self.speed_report(20.0 + i % 50) for i in range(count)]
        topic = topic_for(self.topic_root, self.school_id, TopicKind.SPEED)
        mids = [self._client.publish(topic, r.model_dump_json(), qos=1).mid for r in reports]
        self._wait(mids)
        return reports


def host_health() -> HostHealth:
    """Any host health: an online status must carry one."""
    return HostHealth(
        cpu_percent=1.0,
        memory_percent=1.0,
        memory_available_bytes=1,
        disk_percent=1.0,
        disk_free_bytes=1,
        uptime_s=1,
    )
