"""The national load: what 7,400 schools' agents publish, at any rate, from several processes.

Each school has 10 devices (2 panic buttons, 4 turnstiles, the police link,
3 cameras). At the agent's default settings a school sends, per day:

- 288 full device lists (every 5 minutes, 10 devices: 11 points);
- 288 agent statuses (every 5 minutes, retained: 1 point);
- about 12 device changes (1 device: 2 points);
- 4 speed tests (1 point).

:data:`MIX` is that day in proportion. Every message is rendered from a
per-school template with a fresh ``message_id``, the current ``measured_at``
(microseconds: the collector measures its lag from it) and, for device lists,
the school's next ``sequence``, so the collector sees what real agents send:
valid, unique, in order.

Publishers are separate processes (one paho client each, QoS 1, like the
agents), paced to a total rate or as fast as the broker acknowledges.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from agent.contract import (
    DEVICE_RESULT_CODES,
    SPEED_RESULT_CODES,
    AgentState,
    AgentStatus,
    DeviceKind,
    DeviceObservation,
    DeviceResult,
    DevicesReport,
    DeviceState,
    HeartbeatCounts,
    HostHealth,
    OutboxCounts,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
    StatusReason,
    TopicKind,
    topic_for,
)

SCHOOLS = 7400
DEVICES = [  # (kind, how many) per school: 10 devices
    (DeviceKind.PANIC_BUTTON, 2),
    (DeviceKind.TURNSTILE, 4),
    (DeviceKind.POLICE_LINK, 1),
    (DeviceKind.CAMERA, 3),
]
PER_DAY = {"full": 288, "status": 288, "change": 12, "speed": 4}  # per school, defaults
MIX = {kind: count / sum(PER_DAY.values()) for kind, count in PER_DAY.items()}
# Points each becomes in InfluxDB: a device point per device, and a device_report point.
POINTS = {"full": 11, "status": 1, "change": 2, "speed": 1}

_SENTINEL_ID = "f" * 32
_SENTINEL_AT = datetime(2001, 2, 3, 4, 5, 6, 70809, tzinfo=UTC)
_SENTINEL_SEQ = 987_654_321
_AT_TEXT = "2001-02-03T04:05:06.070809Z"


def national_points_per_day(schools: int = SCHOOLS) -> int:
    return schools * sum(PER_DAY[k] * POINTS[k] for k in PER_DAY)


def national_messages_per_s(schools: int = SCHOOLS) -> float:
    return schools * sum(PER_DAY.values()) / 86_400


def mean_points_per_message() -> float:
    return sum(MIX[k] * POINTS[k] for k in MIX)


def _template(model: BaseModel) -> str:
    """The model as JSON with ``{mid}``, ``{at}`` and ``{seq}`` where the sentinels were."""
    text = model.model_dump_json().replace("{", "{{").replace("}", "}}")
    text = text.replace(_SENTINEL_ID, "{mid}").replace(_AT_TEXT, "{at}")
    return text.replace(f'"sequence":{_SENTINEL_SEQ}', '"sequence":{seq}')


def _observations(sid: str, count: int | None = None) -> list[DeviceObservation]:
    found = []
    for kind, many in DEVICES:
        for number in range(1, many + 1):
            found.append(
                DeviceObservation(
                    device_id=f"{kind.value.replace('_', '-')}-{number}",
                    kind=kind,
                    label=f"{kind.value.replace('_', ' ')} {number}, {sid}",
                    state=DeviceState.UP,
                    changed_at=_SENTINEL_AT - timedelta(hours=3),
                    result=DeviceResult.SUCCESS.value,
                    result_code=DEVICE_RESULT_CODES[DeviceResult.SUCCESS],
                    response_ms=4.2,
                )
            )
    return found[:count]


@dataclass
class SchoolTemplates:
    school_id: str
    topics: dict[str, str]
    bodies: dict[str, str]
    sequence: int = 0

    @classmethod
    def of(cls, sid: str, root: str) -> SchoolTemplates:
        agent = f"agent-{sid.lower()}"
        common: dict[str, Any] = {"school_id": sid, "agent_id": agent}
        common |= {"message_id": _SENTINEL_ID, "measured_at": _SENTINEL_AT}
        boot = uuid.uuid5(uuid.NAMESPACE_URL, sid).hex

        def devices(count: int | None, full: bool) -> DevicesReport:
            return DevicesReport(
                **common, boot_id=boot, sequence=_SENTINEL_SEQ, full=full,
                devices=_observations(sid, count),
            )  # fmt: skip

        measurement = SpeedMeasurement(
            result=SpeedResult.SUCCESS,
            result_code=SPEED_RESULT_CODES[SpeedResult.SUCCESS],
            threshold_mbps=20.0,
            download_mbps=31.4,
            upload_mbps=9.8,
            latency_ms=41.0,
            jitter_ms=2.1,
            meets_threshold=True,
            bytes_received=31_400_000,
            bytes_sent=9_800_000,
            duration_s=12.0,
        )
        status = AgentStatus(
            **common,
            status=AgentState.ONLINE,
            reason=StatusReason.HEARTBEAT,
            version="0.9.0",
            boot_id=boot,
            host=HostHealth(
                cpu_percent=3.5,
                memory_percent=41.0,
                memory_available_bytes=1_100_000_000,
                disk_percent=37.0,
                disk_free_bytes=9_000_000_000,
                uptime_s=86_000,
                load_1m=0.2,
                temperature_c=48.0,
            ),
            data_used_month_bytes=1_200_000_000,
            data_budget_month_bytes=20_000_000_000,
            heartbeats=HeartbeatCounts(accepted=1440),
            outbox=OutboxCounts(messages=0, bytes=0, oldest_age_s=0.0, dropped=0),
        )
        speed = SpeedReport.of(measurement, school_id=sid, agent_id=agent, measured_at=_SENTINEL_AT)
        speed = speed.model_copy(update={"message_id": _SENTINEL_ID})
        bodies = {
            "full": _template(devices(None, full=True)),
            "change": _template(devices(1, full=False)),
            "status": _template(status),
            "speed": _template(speed),
        }
        kinds = {"full": TopicKind.DEVICES, "change": TopicKind.DEVICES}
        kinds |= {"status": TopicKind.AGENT, "speed": TopicKind.SPEED}
        topics = {name: topic_for(root, sid, kind) for name, kind in kinds.items()}
        return cls(sid, topics, bodies)

    def render(self, kind: str, now: datetime | None = None) -> tuple[str, bytes]:
        at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if kind in ("full", "change"):
            self.sequence += 1
        body = self.bodies[kind].format(mid=uuid.uuid4().hex, at=at, seq=self.sequence)
        return self.topics[kind], body.encode()


def kinds_in_mix(seed: int) -> Iterator[str]:
    """An endless sequence of message kinds in the national proportions."""
    rng = random.Random(seed)
    names, weights = list(MIX), list(MIX.values())
    while True:
        yield from rng.choices(names, weights, k=1024)


@dataclass(frozen=True)
class PublishPlan:
    """What one publisher process sends: ``count`` messages at ``rate`` per second (0: flat out)."""

    host: str
    port: int
    root: str
    schools: list[str]
    count: int
    rate: float
    seed: int
    in_flight: int = 1000
    kinds: list[str] | None = None  # instead of the mix: these, school by school, in turn


def publish(plan: PublishPlan) -> dict[str, Any]:
    """Publish the plan with QoS 1; return sent, acknowledged and the seconds it took."""
    schools = [SchoolTemplates.of(sid, plan.root) for sid in plan.schools]
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"load-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv311,
    )
    client.max_inflight_messages_set(plan.in_flight)
    client.max_queued_messages_set(plan.in_flight)
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1

    client.on_publish = on_publish
    client.connect(plan.host, plan.port, keepalive=60)
    client.loop_start()
    rng = random.Random(plan.seed)
    each = plan.kinds
    kinds = kinds_in_mix(plan.seed) if each is None else itertools.cycle(each)

    def pick(number: int) -> SchoolTemplates:
        if each is None:
            return rng.choice(schools)
        return schools[(number // len(each)) % len(schools)]  # every school, each kind

    started = time.monotonic()
    sent = 0
    points = 0
    try:
        while sent < plan.count:
            if plan.rate > 0:
                due = started + sent / plan.rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            kind = next(kinds)
            topic, body = pick(sent).render(kind)
            while sent - acked >= plan.in_flight:  # the window is full: wait for the broker
                time.sleep(0.0005)
                if time.monotonic() - started > plan.count / max(plan.rate, 1000) + 120:
                    raise TimeoutError("the broker stopped acknowledging")
            client.publish(topic, body, qos=1, retain=kind == "status")
            sent += 1
            points += POINTS[kind]
        deadline = time.monotonic() + 60
        while acked < sent and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        elapsed = time.monotonic() - started
        client.disconnect()
        client.loop_stop()
    return {"sent": sent, "acked": acked, "seconds": elapsed, "points": points}


def publish_from_processes(
    host: str,
    port: int,
    root: str,
    schools: list[str],
    count: int,
    rate: float,
    processes: int,
    kinds: list[str] | None = None,
) -> dict[str, Any]:
    """Split ``count`` messages at ``rate``/s over ``processes`` publishers; wait for all."""
    slices = [schools[i::processes] for i in range(processes)]
    plans = [
        PublishPlan(host, port, root, slices[i], count // processes + (i < count % processes),
                    rate / processes, seed=i + 1, kinds=kinds)
        for i in range(processes)
    ]  # fmt: skip
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(publish, plans)
    return {
        "sent": sum(r["sent"] for r in results),
        "acked": sum(r["acked"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "points": sum(r["points"] for r in results),
    }
