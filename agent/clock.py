"""Time for the agent's loop, swappable so tests can run days of schedule in a moment.

The daemon never calls ``time`` or ``datetime.now`` itself: it asks a
:class:`Clock`. :class:`SystemClock` is the real one; tests pass their own.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""

    def wait(self, seconds: float, wake: threading.Event) -> bool:
        """Sleep up to ``seconds``; return True at once if ``wake`` is (or becomes) set."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, seconds: float, wake: threading.Event) -> bool:
        return wake.wait(max(0.0, seconds))
