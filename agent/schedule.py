"""When the next speed test is due.

A fleet must never test at the same moment: each agent picks its own random
moment inside each configured local-time window (by default 08-12, 12-16 and
16-20 in UTC+5), plus one test shortly after it starts. A failed test is
tried again ``retries`` times, ``retry_interval`` apart; then the schedule
moves on to the next window.

>>> plan = SpeedSchedule(windows, timezone, random.Random())   # doctest: +SKIP
>>> due = plan.start(now)                                         # doctest: +SKIP
>>> due = plan.after_test(now, succeeded=False)                   # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo


@dataclass(frozen=True)
class Window:
    """A daily stretch of local time, ``start`` inclusive, ``end`` exclusive."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"08:00-12:00"`` (or ``"8-12"``)."""
        try:
            first, last = (part.strip() for part in text.split("-"))
            window = cls(_clock_time(first), _clock_time(last))
        except ValueError as exc:
            raise ValueError(f"a window looks like 08:00-12:00, got {text!r}") from exc
        if window.end <= window.start:
            raise ValueError(f"window {text!r} ends before it starts")
        return window

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _clock_time(text: str) -> time:
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes or 0))


class SpeedSchedule:
    def __init__(
        self,
        windows: list[Window],
        timezone: tzinfo,
        rng: random.Random,
        *,
        startup_delay: tuple[timedelta, timedelta] = (timedelta(minutes=1), timedelta(minutes=10)),
        retries: int = 3,
        retry_interval: timedelta = timedelta(minutes=15),
    ) -> None:
        self._windows = sorted(windows, key=lambda w: w.start)
        self._tz = timezone
        self._rng = rng
        self._startup_delay = startup_delay
        self._retries = retries
        self._retry_interval = retry_interval
        self._retries_left = retries
        self._served: set[datetime] = set()  # window starts already given a test

    def start(self, now: datetime) -> datetime:
        """The first test: a random moment shortly after start-up."""
        low, high = self._startup_delay
        due = now + low + (high - low) * self._rng.random()
        window_start = self._window_containing(due)
        if window_start is not None:
            self._served.add(window_start)  # the start-up test serves this window
        return due

    def after_test(self, now: datetime, *, succeeded: bool) -> datetime:
        """When to test next, given how the test that just ran went."""
        if not succeeded and self._retries_left > 0:
            self._retries_left -= 1
            return now + self._retry_interval
        self._retries_left = self._retries
        return self.next_slot(now)

    def next_slot(self, now: datetime) -> datetime:
        """A random moment in the next window not yet served, later than ``now``."""
        local_now = now.astimezone(self._tz)
        day = local_now.date()
        for _ in range(3):
            for window in self._windows:
                start = datetime.combine(day, window.start, self._tz)
                end = datetime.combine(day, window.end, self._tz)
                if end <= local_now or start in self._served:
                    continue
                earliest = max(start, local_now)
                due = earliest + (end - earliest) * self._rng.random()
                self._served.add(start)
                self._forget_before(start)
                return due
            day += timedelta(days=1)
        raise ValueError("no schedule window: configure at least one")  # pragma: no cover

    def _window_containing(self, moment: datetime) -> datetime | None:
        local = moment.astimezone(self._tz)
        for window in self._windows:
            if window.start <= local.time() < window.end:
                return datetime.combine(local.date(), window.start, self._tz)
        return None

    def _forget_before(self, moment: datetime) -> None:
        self._served = {start for start in self._served if start >= moment - timedelta(days=2)}
