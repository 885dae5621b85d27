"""``school-collector run``: the consumer, the pipeline and the writer, wired together."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from collector.consumer import Consumer
from collector.influx import InfluxError, make_writer
from collector.influx.query import InfluxQL
from collector.pipeline import Pipeline
from collector.registry import SchoolRegistry
from collector.registry_store import load_registry
from collector.rollup import Rollup
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)


def run_collector(settings: CollectorSettings) -> int:
    writer = make_writer(settings.influx)
    if settings.influx.create_database:
        try:
            writer.ensure_database()
        except InfluxError as exc:
            log.warning("InfluxDB not reachable yet (%s); writes will retry", exc)
    registry = None
    loader = None
    if settings.registry_file is not None:
        registry = SchoolRegistry.load(settings.registry_file)
        log.info("school registry %s: %d schools", settings.registry_file, len(registry))
    else:
        reader = InfluxQL(settings.influx)
        loader = lambda: load_registry(reader)  # noqa: E731 - the newest import, re-read
    pipeline = Pipeline(writer, settings, registry, registry_loader=loader)
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
    rollup = Rollup(settings, make_writer(settings.influx))
    consumer.start()
    rollup.start()
    try:
        pipeline.run(consumer)
    finally:
        rollup.stop()
        consumer.close()
        writer.close()
    return 0
