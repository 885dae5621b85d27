"""Heartbeats from the school's own (local) MQTT broker.

A device publishes ``{"token": "<its token>"}`` on ``<topic_prefix>/<device_id>``;
the agent subscribes to ``<topic_prefix>/+`` and hands each message to the
:class:`~agent.devices.heartbeats.HeartbeatDesk`. This is a second, separate
connection: the local broker is not the ministry's.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import paho.mqtt.client as paho

from agent.broker import BrokerSettings, ConnectionWatch, new_client
from agent.devices.heartbeats import HeartbeatDesk

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096


class HeartbeatSubscriber:
    """Listens on the local broker, reconnecting on its own, until :meth:`close`."""

    def __init__(self, settings: BrokerSettings, topic_prefix: str, desk: HeartbeatDesk) -> None:
        self._prefix = topic_prefix.rstrip("/") + "/"
        self._desk = desk
        self._client, self.address = new_client("school-agent-heartbeats", settings)
        self._keepalive = settings.keepalive_s
        self._watch = ConnectionWatch(self._client, self.address, self._subscribe)
        self._subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()

    def start(self) -> None:
        self._client.connect_async(self.address.host, self.address.port, self._keepalive)
        self._client.loop_start()
        log.info("listening for device heartbeats on %s, topic %s+", self.address, self._prefix)

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker confirmed the subscription (heartbeats flow from then on)."""
        return self._subscribed.wait(timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _subscribe(self, client: paho.Client, _session_present: bool) -> None:
        client.subscribe(self._prefix + "+", qos=1)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        device_id = message.topic[len(self._prefix) :]
        token = _token(bytes(message.payload))
        if token is None:
            self._desk.malformed("mqtt", device_id)
            return
        self._desk.receive(device_id, token, "mqtt")


def _token(payload: bytes) -> str | None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    token = document.get("token") if isinstance(document, dict) else None
    return token if isinstance(token, str) else None
