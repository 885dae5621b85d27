"""Writing to InfluxDB (v1 ``/write``, or v2 through influxdb-client) and querying with InfluxQL."""

from __future__ import annotations

from typing import Protocol

from collector.influx.errors import InfluxError, InfluxRejected, InfluxUnavailable
from collector.settings import InfluxSettings

# The retention policy (InfluxDB 2.x/3.x: the bucket "<database>/history") that
# keeps the registry, the rollout percentages and the summaries for years.
HISTORY = "history"
# The retention policy (bucket "<database>/state") of the current state
# (collector.current_state): a day is plenty, readers scan 20 minutes.
STATE = "state"
STATE_DURATION = "1d"


class InfluxWriter(Protocol):
    def write(self, lines: list[str]) -> None:
        """Store the lines or raise InfluxRejected / InfluxUnavailable."""

    def ensure_database(self) -> None: ...

    def close(self) -> None: ...


def make_writer(settings: InfluxSettings) -> InfluxWriter:
    if settings.api == "v2":
        from collector.influx.v2 import V2Writer  # noqa: PLC0415 - influxdb-client only when used

        return V2Writer(settings)
    from collector.influx.v1 import V1Writer  # noqa: PLC0415

    return V1Writer(settings)


def make_history_writer(settings: InfluxSettings) -> InfluxWriter:
    """A writer into the ``history`` retention policy of the same database."""
    return make_writer(settings.model_copy(update={"retention_policy": HISTORY}))


__all__ = [
    "HISTORY",
    "STATE",
    "STATE_DURATION",
    "InfluxError",
    "InfluxRejected",
    "InfluxUnavailable",
    "InfluxWriter",
    "make_history_writer",
    "make_writer",
]
