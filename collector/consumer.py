"""The collector's MQTT session: persistent, QoS 1, acknowledged by hand after the write.

The session outlives the process (fixed client id, ``clean_start=False``, an
MQTT 5 session expiry), so messages that arrive while the collector is down,
or that it received but had not yet stored, are delivered again when it
returns. The receive maximum bounds how many unacknowledged messages the
broker sends at once: that is the collector's in-flight window.

It subscribes to each kind of every school's topics, never to the receipts it
publishes back to the schools, and announces (retained) whether it sends them.
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
from agent.contract import (
    Capabilities,
    DeadLetter,
    subscription_for,
    subscriptions_for,
    utc_now,
)
from collector.pipeline import Incoming
from collector.settings import CollectorMqttSettings

log = logging.getLogger(__name__)

DEAD_LETTER_ACK_TIMEOUT_S = 10.0
# QoS 1 messages paho keeps unacknowledged before it queues the rest in memory:
# dead letters (a batch's worth) and the announcement.
MAX_INFLIGHT = 1000


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
        self._client.max_inflight_messages_set(MAX_INFLIGHT)

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

    def receipt(self, topic: str, payload: bytes) -> None:
        """Publish a receipt with QoS 0: a lost one is made good by the agent, which
        sends the message again and gets a receipt for the repeat.

        QoS 1 would add nothing on the way to the broker: the receipt goes ahead of
        the acknowledgements on one TCP stream, so a receipt lost there means lost
        acknowledgements, and the messages come again. And it cost memory: paho
        keeps a QoS 1 publish until its PUBACK, which waits behind the inbound
        backlog on the same socket, and a long read of that backlog holds writes
        back (paho reads a packet for each publish it holds), so a drain held ever
        more receipts (321-370 MB for 200,000 messages, against 112 MB without).
        """
        self._client.publish(topic, payload, qos=0)

    # -- paho callbacks (network thread) ----------------------------------

    def _subscribe(self, client: paho.Client, _session_present: bool) -> None:
        with self._generation_lock:
            self._generation += 1
        # retainHandling=1: retained statuses only when the subscription is new,
        # not again on every reconnect of a persistent session.
        options = SubscribeOptions(qos=1, retainHandling=1)
        client.subscribe([(topic, options) for topic in self._subscriptions()])
        # A session from before receipts holds the one wildcard, which would also
        # match the receipts; a subscription the session lacks is no error.
        client.unsubscribe(self._share(subscription_for(self._settings.topic_root)))
        self._announce(client)

    def _announce(self, client: paho.Client) -> None:
        """Retained, so every agent learns on subscribing whether receipts will come."""
        capabilities = Capabilities(
            collector_id=self._settings.client_id,
            receipts=self._settings.receipts,
            announced_at=utc_now(),
        )
        client.publish(
            self._settings.capabilities_topic, capabilities.model_dump_json(), qos=1, retain=True
        )

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any
    ) -> None:
        topics = ", ".join(self._subscriptions())
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            log.error("broker refused the subscription to %s: %s", topics, refused[0])
        else:
            log.info("subscribed to %s with QoS %s", topics, reasons[0].value)

    def _subscriptions(self) -> list[str]:
        """Each kind of every school; with ``share_group``, shared among the group."""
        return [self._share(topics) for topics in subscriptions_for(self._settings.topic_root)]

    def _share(self, topics: str) -> str:
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
