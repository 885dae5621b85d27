"""Each school's reachability checks in school hours over the availability window.

``school_hours_available`` and ``availability_mean`` need, per school, the sum
of ``school_passed`` and ``school_checks`` of its ``connectivity`` points over
``rollout.availability_window_days`` (30). At national scale that is about 3.5
million points; summed in one query it outlasted the client's timeout
(tests/bench/availability_query.py), and the state keeper asks at every rollout.

So the sum is read a UTC day at a time, and a day that is over and settled
(:data:`SETTLE_S` past its end: a period's report arrives once the period is
over) is kept, as two integers per school, until it leaves the window. Each
rollout then reads only the window's first, partial day and what is not yet
settled: about two days of points instead of thirty. A point stored late (an
outbox after an outage) carries a ``stored_late`` marker; the keeper passes its
time to :meth:`SchoolChecks.stored_late`, which forgets the kept days it may
have changed, to be read again.
"""

from __future__ import annotations

from array import array
from datetime import datetime

from collector.influx.query import InfluxQL

NS = 1_000_000_000
DAY_NS = 86_400 * NS
# A day is kept once this long past its end: an hour's report arrives after the hour,
# and one that comes later than LATE_S after that carries a stored_late marker.
SETTLE_S = 2 * 3600
# The longest period a connectivity point covers (its time is the period's start).
MAX_PERIOD_S = 3600
SUM = (
    'SELECT sum("school_passed"), sum("school_checks") FROM "connectivity" '
    'WHERE time {after} AND time {before} GROUP BY "school_id"'
)


class SchoolChecks:
    """Checks passed and made in school hours per school over a window; whole days kept."""

    def __init__(self, ql: InfluxQL) -> None:
        self._ql = ql
        self._index: dict[str, int] = {}
        self._days: dict[int, tuple[array[int], array[int]]] = {}  # day -> (passed, checks)
        self.days_read = 0  # whole days read from InfluxDB (and kept) so far

    def window(self, at: datetime, days: float) -> dict[str, tuple[float, float]]:
        """Each school's (passed, checks) in school hours in ``(at - days, at]``."""
        until = int(at.timestamp() * NS)
        since = until - int(days * DAY_NS)
        first = since // DAY_NS + 1  # the first whole day after ``since``
        last = (until - SETTLE_S * NS) // DAY_NS - 1  # the last settled whole day
        passed = array("q", bytes(8 * len(self._index)))
        checks = array("q", bytes(8 * len(self._index)))
        if first > last:  # no settled whole day in the window: one read of it all
            self._add(f"> {since}", f"<= {until}", passed, checks)
            return self._totals(passed, checks)
        for day in [d for d in self._days if not first <= d <= last]:
            del self._days[day]
        self._add(f"> {since}", f"< {first * DAY_NS}", passed, checks)
        for day in range(first, last + 1):
            if day not in self._days:
                self._days[day] = self._read_day(day)
                self.days_read += 1
            day_passed, day_checks = self._days[day]
            _grow(passed, len(self._index))
            _grow(checks, len(self._index))
            for index in range(len(day_checks)):
                passed[index] += day_passed[index]
                checks[index] += day_checks[index]
        self._add(f">= {(last + 1) * DAY_NS}", f"<= {until}", passed, checks)
        return self._totals(passed, checks)

    def stored_late(self, since_ns: int) -> None:
        """Points measured from ``since_ns`` on were stored late: read their days again.

        A connectivity point's time is its period's start, up to an hour before
        the moment it was complete, which is what the marker's time is.
        """
        earliest = (since_ns - MAX_PERIOD_S * NS) // DAY_NS
        for day in [d for d in self._days if d >= earliest]:
            del self._days[day]

    # -- reading ----------------------------------------------------------------------

    def _sums(self, after: str, before: str) -> list[tuple[int, int, int]]:
        """(school index, passed, checks) of each school with points in the range."""
        found = []
        for series in self._ql.query(SUM.format(after=after, before=before)):
            school_id = series.tags["school_id"]
            index = self._index.setdefault(school_id, len(self._index))
            row = series.values[0]
            found.append((index, int(row[1] or 0), int(row[2] or 0)))
        return found

    def _read_day(self, day: int) -> tuple[array[int], array[int]]:
        rows = self._sums(f">= {day * DAY_NS}", f"< {(day + 1) * DAY_NS}")
        passed = array("q", bytes(8 * len(self._index)))
        checks = array("q", bytes(8 * len(self._index)))
        for index, day_passed, day_checks in rows:
            passed[index], checks[index] = day_passed, day_checks
        return passed, checks

    def _add(self, after: str, before: str, passed: array[int], checks: array[int]) -> None:
        for index, more_passed, more_checks in self._sums(after, before):
            _grow(passed, len(self._index))
            _grow(checks, len(self._index))
            passed[index] += more_passed
            checks[index] += more_checks

    def _totals(self, passed: array[int], checks: array[int]) -> dict[str, tuple[float, float]]:
        return {
            school_id: (float(passed[index]), float(checks[index]))
            for school_id, index in self._index.items()
            if index < len(checks) and checks[index]
        }


def _grow(values: array[int], size: int) -> None:
    """Zeros appended to ``values`` up to ``size`` (schools first seen since it was made)."""
    if len(values) < size:
        values.extend([0] * (size - len(values)))
