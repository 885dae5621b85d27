"""The collector's rollup job: rollout percentages into the ``rollout`` measurement.

At start, then every ``rollout.interval_s``, a thread computes the percentages
for that moment (:mod:`collector.rollout`) and writes them, so Grafana can chart
rollout over time with the same numbers ``school-collector rollout`` prints. A
run reads every school's latest results: its memory is given back after it.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from collector.influx import InfluxError, InfluxWriter
from collector.influx.query import InfluxQL
from collector.memory import release_free_memory
from collector.rollout import rollout, rollout_lines
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)


class Rollup:
    def __init__(self, settings: CollectorSettings, writer: InfluxWriter) -> None:
        self._settings = settings
        self._writer = writer
        self._client = InfluxQL(settings.influx)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)
        self._client.close()
        self._writer.close()

    def once(self, at: datetime | None = None) -> int:
        """Compute and write the percentages for ``at``; return the points written."""
        at = at or datetime.now(UTC)
        rows = rollout(self._client, at, self._settings.rollout.rules())
        if rows is None:
            log.debug("no registry imported yet: no rollout percentages")
            return 0
        lines = rollout_lines(rows, at)
        self._writer.write(lines)
        return len(lines)

    def _run(self) -> None:
        delay = 0.0  # at once: a restarted collector's percentages are fresh
        while not self._stopping.wait(delay):
            delay = self._settings.rollout.interval_s
            try:
                written = self.once()
            except InfluxError as exc:
                log.warning("rollout percentages not computed this time: %s", exc)
            except Exception:
                log.exception("the rollup failed; trying again next interval")
            else:
                log.debug("rollout: %d points written", written)
            release_free_memory()
