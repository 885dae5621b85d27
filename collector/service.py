"""``school-collector run``: the consumer, the pipeline and the writer, wired together."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from collector import retention
from collector.consumer import Consumer
from collector.influx import InfluxError, InfluxWriter, make_history_writer, make_writer
from collector.influx.query import InfluxQL
from collector.pipeline import Pipeline
from collector.registry import SchoolRegistry
from collector.registry_store import NewerRegistry
from collector.rollup import Rollup
from collector.settings import CollectorSettings
from collector.state_keeper import StateKeeper

log = logging.getLogger(__name__)


def prepare_database(settings: CollectorSettings, writer: InfluxWriter) -> bool:
    """Create the database and apply the retention plan (InfluxDB 1.x); False if it failed."""
    if not settings.influx.create_database:
        return True
    try:
        writer.ensure_database()
        if settings.influx.api == "v1":
            client = InfluxQL(settings.influx)
            try:
                retention.apply(client, retention.Plan.of(settings))
            finally:
                client.close()
    except InfluxError as exc:
        log.warning(
            "could not prepare the database and its retention plan yet (%s); trying again "
            "every minute. If InfluxDB refuses, give influx.username admin rights or have an "
            "administrator run `school-collector retention apply`",
            exc,
        )
        return False
    return True


def _prepare_later(settings: CollectorSettings) -> None:
    writer = make_writer(settings.influx)
    while not prepare_database(settings, writer):
        time.sleep(60)
    log.info("database %r and its retention policies are ready", settings.influx.database)
    writer.close()


def run_collector(settings: CollectorSettings) -> int:
    writer = make_writer(settings.influx)
    if not prepare_database(settings, writer):
        threading.Thread(
            target=_prepare_later, args=(settings,), name="prepare-database", daemon=True
        ).start()
    registry = None
    loader = None
    if settings.registry_file is not None:
        registry = SchoolRegistry.load(settings.registry_file)
        log.info("school registry %s: %d schools", settings.registry_file, len(registry))
    else:
        loader = NewerRegistry(InfluxQL(settings.influx))  # a newer import, when there is one
    late = None
    if settings.influx.api == "v1":  # continuous queries are InfluxDB 1.x's
        late = retention.LateHours(retention.Plan.of(settings), InfluxQL(settings.influx))
    pipeline = Pipeline(
        writer, settings, registry, registry_loader=loader, late=late.note if late else None
    )
    consumer = Consumer(settings.mqtt, pipeline.submit)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, finishing the current batch", signal.Signals(signum).name)
        pipeline.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "collector %s: broker %s, topics %s/+/+, writing to %s",
        settings.mqtt.client_id,
        consumer.address,
        settings.mqtt.topic_root,
        writer,
    )
    rollup: Rollup | StateKeeper
    if settings.state.enabled:  # the rollout from the current state, without raw queries
        rollup = StateKeeper(settings, draining=pipeline.draining)
    else:
        rollup = Rollup(
            settings,
            make_history_writer(settings.influx),
            make_writer(settings.influx),
            draining=pipeline.draining,
        )
    consumer.start()
    rollup.start()
    if late is not None:
        late.start()
    try:
        pipeline.run(consumer)
    finally:
        if late is not None:
            late.stop()
        rollup.stop()
        consumer.close()
        writer.close()
    return 0
