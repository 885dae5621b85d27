"""A hostile school: its own account, publishing valid-looking results as fast as it can."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.publishing import speed_report
from tests.support.secure_broker import SecureBroker
from tests.support.services import wait_for


class Flooder:
    """One school's account publishing valid speed results flat out, QoS 1, over TLS.

    The broker binds the account to one session, so one connection is all it gets.
    """

    def __init__(self, secure: SecureBroker, school_id: str) -> None:
        self.school_id = school_id
        self.acked = 0
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="flood", protocol=paho.MQTTv5
        )
        self._client.username_pw_set(school_id, secure.password(school_id))
        self._client.tls_set_context(ssl.create_default_context(cafile=str(secure.ca)))
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(2000)
        self._client.on_publish = self._on_publish
        self._client.connect("localhost", secure.tls_port)
        self._client.loop_start()

    def _on_publish(self, *_: Any) -> None:
        with self._lock:
            self.acked += 1

    def run(self, seconds: float, limit: int) -> int:
        """Publish until ``seconds`` pass or ``limit`` messages went; the count acknowledged."""
        start = datetime.now(UTC)
        body = json.loads(
            speed_report(self.school_id, uuid.uuid4().hex, 99.0, start).model_dump_json()
        )
        topic = f"schools/{self.school_id}/speed"
        deadline = time.monotonic() + seconds
        sent = 0
        while sent < limit and time.monotonic() < deadline:
            # every one a distinct, valid result claiming the present
            body["message_id"] = f"{sent:032x}"
            body["measured_at"] = (start + timedelta(microseconds=sent)).isoformat()
            payload = json.dumps(body)
            if self._client.publish(topic, payload, qos=1).rc == 0:
                sent += 1
            else:
                time.sleep(0.001)  # paho's own queue is full: let the broker catch up
        wait_for(lambda: self.acked >= sent, timeout=60, what="the flood to be acknowledged")
        self._client.disconnect()
        self._client.loop_stop()
        return sent
