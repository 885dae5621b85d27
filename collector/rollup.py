"""The collector's rollup job: rollout percentages into the ``rollout`` measurement.

At start, then every ``rollout.interval_s``, a thread computes the percentages
for that moment (:mod:`collector.rollout`) and writes them, so Grafana can chart
rollout over time with the same numbers ``school-collector rollout`` prints. It
also lists the schools to chase (at risk, dropped off, never reported) in
``rollout_school``, for the national dashboard. A run reads every school's
latest results: its memory is given back after it.

While the collector drains a backlog (after an outage of its own, or of
InfluxDB) a run waits, up to one more interval: percentages computed from half
the backlog would dip, and the drain is faster without the run's queries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from collector.influx import InfluxError, InfluxWriter
from collector.influx.query import InfluxQL
from collector.memory import release_free_memory
from collector.rollout import rollout_lines, survey
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)


# How often a postponed run looks again whether the backlog is drained.
DRAIN_POLL_S = 5.0


def postpone(draining: Callable[[], bool], stopping: threading.Event, limit_s: float) -> bool:
    """Wait while the collector drains a backlog, at most ``limit_s``; True if stopping."""
    limit = time.monotonic() + limit_s
    while draining() and time.monotonic() < limit:
        if stopping.wait(DRAIN_POLL_S):
            return True
    return False


class Rollup:
    def __init__(
        self,
        settings: CollectorSettings,
        writer: InfluxWriter,
        raw_writer: InfluxWriter,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        """``writer`` writes to the history policy, ``raw_writer`` to the raw one."""
        self._settings = settings
        self._writer = writer
        self._raw_writer = raw_writer
        self._draining = draining
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
        self._raw_writer.close()

    def once(self, at: datetime | None = None) -> int:
        """Compute and write the percentages for ``at``; return the points written."""
        found = survey(self._client, at or datetime.now(UTC), self._settings.rollout.rules())
        if found is None:
            log.debug("no registry imported yet: no rollout percentages")
            return 0
        lines = rollout_lines(found.rows(), found.at)
        self._writer.write(lines)
        chase = found.chase_lines()
        self._raw_writer.write(chase)
        return len(lines) + len(chase)

    def _run(self) -> None:
        delay = 0.0  # at once: a restarted collector's percentages are fresh
        while not self._stopping.wait(delay):
            delay = self._settings.rollout.interval_s
            if postpone(self._draining, self._stopping, self._settings.rollout.interval_s):
                return
            try:
                written = self.once()
            except InfluxError as exc:
                log.warning("rollout percentages not computed this time: %s", exc)
            except Exception:
                log.exception("the rollup failed; trying again next interval")
            else:
                log.debug("rollout: %d points written", written)
            release_free_memory()
