"""``school-collector simulate``: a national fleet for the demo and for load."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from agent.broker import new_client
from agent.contract import MESSAGE_MODELS, TopicKind, topic_for
from collector.fleet import Fleet, generate, messages, write_direct
from collector.influx import InfluxError, make_writer
from collector.points import ns
from collector.registry_store import import_registry
from collector.service import prepare_database
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)
KINDS = {model: kind for kind, model in MESSAGE_MODELS.items()}


def run_simulation(settings: CollectorSettings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC).replace(microsecond=0)
    fleet = generate(
        args.schools,
        now=now,
        seed=args.seed,
        tests_per_day=args.tests_per_day,
        connectivity_days=args.connectivity_days,
    )
    if args.registry_out is not None:
        args.registry_out.write_text(fleet.registry_csv())
        print(f"registry of {args.schools} schools written to {args.registry_out}")
    writer = make_writer(settings.influx)
    try:
        if not prepare_database(settings, writer):
            print(f"school-collector: cannot prepare InfluxDB at {settings.influx.url}; "
                  "is it running?", file=sys.stderr)  # fmt: skip
            return 1
        if args.via == "influx":
            points = write_direct(
                fleet, writer, settings.influx, registry_at=now - timedelta(hours=1)
            )
            print(f"{args.schools} schools and {points} points written to InfluxDB")
            return 0
        import_registry(
            fleet.registry, settings.influx, "simulated fleet", at_ns=ns(now - timedelta(hours=1))
        )
    except InfluxError as exc:
        print(f"school-collector: InfluxDB: {exc}", file=sys.stderr)
        return 1
    finally:
        writer.close()
    print(f"registry of {args.schools} schools imported; the collector takes it up within "
          f"registry_refresh_s ({settings.registry_refresh_s:g} s)")  # fmt: skip
    sent = publish(fleet, settings, args.compression)
    print(f"{sent} messages published through {settings.mqtt.url} and acknowledged")
    return 0


def publish(fleet: Fleet, settings: CollectorSettings, compression: float) -> int:
    """Publish the fleet's messages in time order, QoS 1, with at most 200 unacknowledged."""
    client, address = new_client(f"fleet-{uuid.uuid4().hex[:8]}", settings.mqtt)
    window = threading.Semaphore(200)
    client.on_publish = lambda *_: window.release()
    client.connect(address.host, address.port)
    client.loop_start()
    batch = list(messages(fleet))
    first = batch[0].measured_at if batch else fleet.now
    started = time.monotonic()
    shown = 0
    try:
        for number, message in enumerate(batch, 1):
            if compression > 0:
                due = (message.measured_at - first).total_seconds() / compression
                time.sleep(max(0.0, due - (time.monotonic() - started)))
            if not window.acquire(timeout=120):
                raise TimeoutError("the broker stopped acknowledging; is it running?")
            kind: TopicKind = KINDS[type(message)]
            topic = topic_for(settings.mqtt.topic_root, message.school_id, kind)
            client.publish(topic, message.model_dump_json(), qos=1, retain=False)
            if number * 20 // len(batch) > shown:
                shown = number * 20 // len(batch)
                print(f"  {number}/{len(batch)} messages ({shown * 5} %)", file=sys.stderr)
        for _ in range(200):  # every acknowledgement is in
            if not window.acquire(timeout=120):
                raise TimeoutError("the broker stopped acknowledging; is it running?")
    finally:
        client.disconnect()
        client.loop_stop()
    return len(batch)
