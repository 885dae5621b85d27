"""The collector's MQTT session: persistent, QoS 1, acknowledged by hand after the write.

The session outlives the process (fixed client id, ``clean_start=False``, an
MQTT 5 session expiry), so messages that arrive while the collector is down,
or that it received but had not yet stored, are delivered again when it
returns. The receive maximum bounds how many unacknowledged messages the
broker sends at once: that is the collector's in-flight window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.broker import AckLedger, ConnectionWatch, new_client
from agent.contract import DeadLetter, subscription_for
from collector.pipeline import Incoming
from collector.settings import CollectorMqttSettings

log = logging.getLogger(__name__)

DEAD_LETTER_ACK_TIMEOUT_S = 10.0


class Consumer:
    """Subscribes every school's topics and hands each message to ``sink``."""

    def __init__(self, settings: CollectorMqttSettings, sink: Callable[[Incoming], None]) -> None:
        self._settings = settings
        self._sink = sink
        self._client, self.address = new_client(settings.client_id, settings, manual_ack=True)
        self._watch = ConnectionWatch(self._client, self.address, on_connected=self._subscribe)
        self._acks = AckLedger()
        self._generation = 0
        self._generation_lock = threading.Lock()
        self._client.on_publish = self._acks.on_publish
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._chain_disconnect(self._client.on_disconnect)

    @property
    def connected(self) -> bool:
        return self._watch.connected

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself after any loss."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        properties.ReceiveMaximum = self._settings.receive_maximum
        self._client.connect_async(
            self.address.host,
            self.address.port,
            keepalive=self._settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()

    def close(self) -> None:
        """Disconnect once the queued acks went out; the session stays on the broker."""
        self._client.disconnect()
        self._client.loop_stop()

    # -- the pipeline's outlet --------------------------------------------

    def is_current(self, item: Incoming) -> bool:
        return item.generation == self._generation

    def ack(self, item: Incoming) -> None:
        """PUBACK ``item``, unless it came on an earlier connection (its mid may be reused)."""
        if item.qos > 0 and self.is_current(item):
            self._client.ack(item.mid, item.qos)

    def dead_letter(self, letters: list[DeadLetter]) -> bool:
        """Publish the letters with QoS 1; True once the broker acknowledged them all."""
        mids = []
        for letter in letters:
            info = self._client.publish(
                self._settings.dead_letter_topic, letter.model_dump_json(), qos=1
            )
            self._acks.track(info.mid)
            mids.append(info.mid)
        missing, refusals = self._acks.wait(set(mids), DEAD_LETTER_ACK_TIMEOUT_S)
        if missing or refusals:
            log.error(
                "dead-letter topic %s: %d unacknowledged, %d refused (%s); "
                "the originals stay unacknowledged and will come again",
                self._settings.dead_letter_topic,
                missing,
                len(refusals),
                refusals[:1],
            )
            return False
        return True

    # -- paho callbacks (network thread) ----------------------------------

    def _subscribe(self, client: paho.Client, _session_present: bool) -> None:
        with self._generation_lock:
            self._generation += 1
        # retainHandling=1: retained statuses only when the subscription is new,
        # not again on every reconnect of a persistent session.
        options = SubscribeOptions(qos=1, retainHandling=1)
        client.subscribe(self._subscription(), options=options)

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any
    ) -> None:
        topic = self._subscription()
        if any(reason.is_failure for reason in reasons):
            log.error("broker refused the subscription to %s: %s", topic, reasons[0])
        else:
            log.info("subscribed to %s with QoS %s", topic, reasons[0].value)

    def _subscription(self) -> str:
        """Every school's topics; with ``share_group``, shared among the group's collectors."""
        topics = subscription_for(self._settings.topic_root)
        group = self._settings.share_group
        return f"$share/{group}/{topics}" if group else topics

    def _chain_disconnect(self, inner: Any) -> Any:
        def on_disconnect(*args: Any) -> None:
            with self._generation_lock:
                self._generation += 1  # nothing from the lost connection may be acked now
            inner(*args)

        return on_disconnect

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")
        self._sink(
            Incoming(
                mid=message.mid,
                qos=message.qos,
                topic=topic,
                payload=bytes(message.payload),
                generation=self._generation,
                arrived_ns=time.time_ns(),
            )
        )
