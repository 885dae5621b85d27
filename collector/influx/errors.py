"""What can go wrong when writing to InfluxDB, sorted by what the caller should do."""

from __future__ import annotations

# Statuses that blame the data itself: split the batch to find the bad point.
DATA_ERROR_STATUSES = frozenset({400, 413, 422})


class InfluxError(Exception):
    """Base of the InfluxDB errors."""


class InfluxUnavailable(InfluxError):
    """Down, overloaded, unreachable or misconfigured: keep the batch and retry later."""


class InfluxRejected(InfluxError):
    """The data was refused (bad line, field type conflict): retrying it will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def explain(status: int, message: str) -> InfluxError:
    """The right error for an HTTP ``status`` from a write, with a hint where one helps."""
    if status in DATA_ERROR_STATUSES:
        return InfluxRejected(status, message)
    hint = {
        401: "; check influx.username/password or influx.token",
        403: "; check that the credentials may write to influx.database",
        404: "; check influx.database (and that the database or bucket exists)",
    }.get(status, "")
    return InfluxUnavailable(f"HTTP {status}: {message}{hint}")
