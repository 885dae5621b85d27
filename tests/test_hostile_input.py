"""Hostile payloads: 10 000 through decode-and-validate, a few hundred through the real stack."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as paho
import psutil
from hypothesis import HealthCheck, given, settings
from localstack import Mosquitto, Process
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import RejectReason
from collector.intake import Accepted, Rejection, decode
from collector.points import PointMaker, text
from tests.support.hostile import HOSTILE, SCHOOL
from tests.support.services import Influx, unique, wait_for

ROOT = "schools"


@settings(
    max_examples=10_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(HOSTILE)
def test_ten_thousand_hostile_payloads_are_stored_or_rejected_never_a_crash(
    case: tuple[str, bytes],
) -> None:
    kind, payload = case
    topic = f"{ROOT}/{SCHOOL}/{kind}"
    result = decode(ROOT, topic, payload, 65536)
    if isinstance(result, Rejection):
        assert isinstance(result.reason, RejectReason)
        assert result.detail
        assert len(result.detail) <= 500
        return
    assert isinstance(result, Accepted)
    for line in PointMaker().lines(result.message, 0):
        assert "\n" not in line  # one point, one line: text cannot start a new point
        assert line.count(" ") >= 2


def _generate(count: int) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(HOSTILE)
    def collect(case: tuple[str, bytes]) -> None:
        found.append(case)

    collect()
    return found


def test_hundreds_of_hostile_payloads_through_broker_and_collector(
    collector: Process, broker: Mosquitto, database: Influx, topic_root: str
) -> None:
    cases = _generate(400)
    verdicts = [
        decode(topic_root, f"{topic_root}/{SCHOOL}/{kind}", payload, 65536)
        for kind, payload in cases
    ]
    accepted = [v.message for v in verdicts if isinstance(v, Accepted)]
    rejected = len(cases) - len(accepted)
    assert accepted  # the generator produces both kinds of payload
    assert rejected
    pid = collector.pid()
    assert pid is not None
    memory_before = psutil.Process(pid).memory_info().rss

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("attacker-"))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for kind, payload in cases:
        client.publish(f"{topic_root}/{SCHOOL}/{kind}", payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()

    def settled() -> list[dict[str, Any]] | None:
        rows = database.rows(
            'SELECT last("stored") AS s, last("dead_lettered") AS d FROM "collector"'
        )
        done = rows and (rows[0]["s"] or 0) + (rows[0]["d"] or 0) >= len(cases)
        return rows if done else None  # the counters are written every second

    totals = wait_for(settled, timeout=120, what=f"{len(cases)} messages stored or rejected")
    assert (totals[0]["s"], totals[0]["d"]) == (len(accepted), rejected)
    assert collector.running()

    stored_ids = {
        row["message_id"]
        for measurement in ("speed", "device_report")
        for row in database.rows(f'SELECT "message_id" FROM "{measurement}"')
    }
    assert stored_ids == {m.message_id for m in accepted}
    errors = {
        row["message_id"]: row["error"]
        for row in database.rows('SELECT "message_id", "error" FROM "speed" WHERE "error" != \'\'')
    }
    for message in accepted:
        sent = json.loads(message.model_dump_json()).get("error")
        if sent:
            assert errors[message.message_id] == text(sent)  # nasty text stored exactly

    growth = psutil.Process(pid).memory_info().rss - memory_before
    assert growth < 50 * 1024 * 1024, f"the collector grew by {growth / 1e6:.0f} MB"
