"""The ceiling of the ingest benchmark: a bare paho-mqtt subscriber that only counts.

    python -m tests.bench.bare_subscriber --port 1883 --count 150000

It takes the same persistent MQTT 5 session and QoS 1 subscription as the
collector (same receive maximum, same topic filter) and acknowledges each
message as paho does by default, on receipt: no decoding, no database. It
prints one JSON line: how many messages arrived and the seconds from the first
to the last, or, with ``--subscribe-only``, creates the session and leaves.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.contract import DEFAULT_TOPIC_ROOT, subscription_for


def main() -> int:
    parser = argparse.ArgumentParser(description="Count QoS 1 messages, nothing else.")
    parser.add_argument("--port", type=int, required=True, help="the broker's port on 127.0.0.1")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages")
    parser.add_argument("--client-id", default="bare-subscriber", help="the session's client id")
    parser.add_argument("--receive-maximum", type=int, default=10_000, help="in-flight window")
    parser.add_argument("--timeout", type=float, default=600, help="give up after (s)")
    parser.add_argument("--subscribe-only", action="store_true", help="make the session, leave")
    args = parser.parse_args()

    subscribed = threading.Event()
    done = threading.Event()
    first: float | None = None
    last = 0.0
    count = 0

    def on_connect(client: paho.Client, *_: Any) -> None:
        client.subscribe(subscription_for(DEFAULT_TOPIC_ROOT), options=SubscribeOptions(qos=1))

    def on_message(_c: Any, _u: Any, _message: paho.MQTTMessage) -> None:
        nonlocal first, last, count
        last = time.monotonic()
        first = first or last
        count += 1
        if count == args.count:
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=paho.MQTTv5
    )
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = args.receive_maximum
    client.connect("127.0.0.1", args.port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        if args.subscribe_only:
            return 0 if subscribed.wait(10) else 1
        done.wait(args.timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    seconds = last - first if first is not None else 0.0
    print(json.dumps({"count": count, "seconds": seconds}))
    return 0 if done.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
