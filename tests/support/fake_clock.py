"""Virtual time for the agent's loop: days of schedule in a moment, no sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta


class FakeClock:
    """``wait`` jumps ahead at once; actions planned with ``at`` run when their moment comes."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._actions: list[tuple[datetime, Callable[[], None]]] = []

    def now(self) -> datetime:
        return self._now

    def at(self, moment: datetime, action: Callable[[], None]) -> None:
        self._actions.append((moment, action))
        self._actions.sort(key=lambda planned: planned[0])

    def wait(self, seconds: float, wake: threading.Event) -> bool:
        if wake.is_set():
            return True
        target = self._now + timedelta(seconds=max(0.0, seconds))
        while self._actions and self._actions[0][0] <= target:
            moment, action = self._actions.pop(0)
            self._now = max(self._now, moment)
            action()
            if wake.is_set():
                return True
        self._now = target
        return False
