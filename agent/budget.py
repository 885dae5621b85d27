"""A monthly cap on the data speed tests may use, for schools on metered links.

Month-to-date usage is kept in ``<state_dir>/data-usage.json`` so it survives
restarts; the month is the calendar month in the schedule's time zone. Before
a test, the agent asks whether the test it is about to run fits: the estimate
is the largest test of the month so far (or ``first_estimate`` before any).
A test that does not fit is skipped and reported as ``budget_exhausted``; a
test that runs is also capped at what is left. The file is read again before
every decision, so a test run by hand (``school-agent speedtest``) and the
daemon count against the same budget.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, tzinfo
from pathlib import Path

log = logging.getLogger(__name__)

USAGE_FILE = "data-usage.json"
MB = 1_000_000


class DataBudget:
    def __init__(
        self,
        state_dir: Path,
        cap_mb: float | None,
        timezone: tzinfo,
        *,
        first_estimate_mb: float = 100.0,
    ) -> None:
        self._path = state_dir / USAGE_FILE
        self.cap_bytes = None if cap_mb is None else int(cap_mb * MB)
        self._tz = timezone
        self._first_estimate = int(first_estimate_mb * MB)
        self._month = ""
        self._used = 0
        self._largest = 0

    def used(self, now: datetime) -> int:
        """Bytes used by speed tests this month."""
        self._load()
        self._roll(now)
        return self._used

    def remaining(self, now: datetime) -> int | None:
        """Bytes left this month, or None without a cap."""
        if self.cap_bytes is None:
            return None
        return max(0, self.cap_bytes - self.used(now))

    def allows_test(self, now: datetime) -> bool:
        """Whether the next test is expected to fit in what is left."""
        left = self.remaining(now)
        if left is None:
            return True
        return (self._largest or self._first_estimate) <= left

    def record(self, now: datetime, moved: int) -> None:
        self._load()
        self._roll(now)
        self._used += moved
        self._largest = max(self._largest, moved)
        self._save()

    def _roll(self, now: datetime) -> None:
        month = now.astimezone(self._tz).strftime("%Y-%m")
        if month != self._month:
            self._month, self._used, self._largest = month, 0, 0

    def _load(self) -> None:
        try:
            saved = json.loads(self._path.read_text(encoding="utf-8"))
            self._month = str(saved["month"])
            self._used = int(saved["used_bytes"])
            self._largest = int(saved["largest_test_bytes"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s (%s); counting from zero", self._path, exc)

    def _save(self) -> None:
        record = {
            "month": self._month,
            "used_bytes": self._used,
            "largest_test_bytes": self._largest,
        }
        tmp = self._path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(record), encoding="utf-8")
            tmp.replace(self._path)
        except OSError as exc:
            log.warning("could not save data usage to %s: %s", self._path, exc)
