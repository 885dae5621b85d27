"""Passive heartbeats over HTTP and a local MQTT broker: accepted, rejected, counted."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from localstack import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from agent.broker import BrokerSettings
from agent.devices.heartbeat_http import HeartbeatEndpoint
from agent.devices.heartbeat_mqtt import HeartbeatSubscriber
from agent.devices.heartbeats import HeartbeatDesk
from agent.devices.inventory import DeviceConfig
from tests.support.device_sims import send_heartbeat
from tests.support.services import unique, wait_for

TOKEN = "panel-token-0123456789"
WRONG = "guessed-token-9876543210"


def _devices() -> list[DeviceConfig]:
    return [
        DeviceConfig.model_validate(
            {
                "id": "panel",
                "kind": "panic_button",
                "label": "Alarm panel",
                "check": "heartbeat",
                "token": TOKEN,
            }
        ),
        DeviceConfig.model_validate(
            {
                "id": "gate",
                "kind": "turnstile",
                "label": "Gate",
                "check": "tcp",
                "address": "127.0.0.1:9",
            }
        ),
    ]


class Beats:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, device_id: str) -> None:
        with self._lock:
            self.seen.append(device_id)


@pytest.fixture
def beats() -> Beats:
    return Beats()


@pytest.fixture
def desk(beats: Beats) -> HeartbeatDesk:
    return HeartbeatDesk(_devices(), beats)


@pytest.fixture
def endpoint(desk: HeartbeatDesk) -> Iterator[str]:
    server = HeartbeatEndpoint("127.0.0.1", 0, desk)
    server.start()
    yield f"http://127.0.0.1:{server.port}/heartbeat/"
    server.close()


def test_a_heartbeat_with_its_token_is_accepted(
    endpoint: str, desk: HeartbeatDesk, beats: Beats
) -> None:
    assert send_heartbeat(endpoint + "panel", TOKEN) == 204
    assert send_heartbeat(endpoint + "panel", TOKEN, method="GET") == 204
    assert beats.seen == ["panel", "panel"]
    assert desk.counts().accepted == 2


def test_bad_tokens_and_unknown_devices_are_rejected_and_counted(
    endpoint: str, desk: HeartbeatDesk, beats: Beats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert send_heartbeat(endpoint + "panel", WRONG) == 401
    assert send_heartbeat(endpoint + "panel", None) == 401
    assert send_heartbeat(endpoint + "ghost", TOKEN) == 404
    assert send_heartbeat(endpoint + "gate", TOKEN) == 404  # checked by the agent, not heartbeats
    assert send_heartbeat(endpoint.replace("/heartbeat/", "/other/") + "panel", TOKEN) == 404

    counts = desk.counts()
    assert (counts.accepted, counts.bad_token, counts.unknown_device, counts.malformed) == (
        0,
        2,
        2,
        1,
    )
    assert beats.seen == []
    assert "bad_token" in caplog.text
    assert TOKEN not in caplog.text
    assert WRONG not in caplog.text


def test_only_get_and_post_count_as_heartbeats(endpoint: str, desk: HeartbeatDesk) -> None:
    assert send_heartbeat(endpoint + "panel", TOKEN, method="PUT") == 405
    assert desk.counts().accepted == 0


def test_the_endpoint_refuses_an_oversize_body(endpoint: str, desk: HeartbeatDesk) -> None:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(  # noqa: S310 - loopback
        endpoint + "panel",
        data=b"x" * 100_000,
        headers={"Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310
    assert caught.value.code == 413
    assert desk.counts().malformed == 1
    assert send_heartbeat(endpoint + "panel", TOKEN) == 204  # and it keeps serving


def test_a_taken_port_is_a_clear_error(desk: HeartbeatDesk) -> None:
    first = HeartbeatEndpoint("127.0.0.1", 0, desk)
    try:
        with pytest.raises(OSError, match=r"choose another heartbeat\.listen"):
            HeartbeatEndpoint("127.0.0.1", first.port, desk)
    finally:
        first.close()


# -- the school's local broker -------------------------------------------------------


def _publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("device-"))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_heartbeats_from_the_local_broker_are_checked_like_http_ones(
    broker: Mosquitto, desk: HeartbeatDesk, beats: Beats
) -> None:
    prefix = unique("local-") + "/heartbeats"
    subscriber = HeartbeatSubscriber(BrokerSettings(url=broker.url), prefix, desk)
    subscriber.start()
    try:
        assert subscriber.wait_subscribed(10)
        sent: list[tuple[str, Any]] = [
            ("panel", {"token": TOKEN}),
            ("panel", {"token": WRONG}),
            ("ghost", {"token": TOKEN}),
            ("panel", "not json"),
            ("panel", {"no": "token"}),
        ]
        for device_id, body in sent:
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            _publish(broker, f"{prefix}/{device_id}", payload)
        wait_for(lambda: sum(desk.counts().model_dump().values()) >= 5, what="every heartbeat")
    finally:
        subscriber.close()
    counts = desk.counts()
    assert (counts.accepted, counts.bad_token, counts.unknown_device, counts.malformed) == (
        1,
        1,
        1,
        2,
    )
    assert beats.seen == ["panel"]
