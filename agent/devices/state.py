"""A device's state from its checks: ``unknown``, ``up``, ``late``, ``down``.

The rules, with N = ``down_after`` and M = ``up_after``:

- ``unknown`` until the first check or heartbeat (``not_checked``);
- a success makes an ``unknown`` or ``late`` device ``up`` at once;
- a miss (a failed check, an overdue heartbeat) makes an ``unknown`` or ``up``
  device ``late``; the N-th consecutive miss makes it ``down``;
- a ``down`` device is ``up`` again only after M consecutive successes; a miss
  among them starts the count again.

So a link that fails every other check stays ``up``/``late`` and never shows
``down``, and a dead device that answers once in a while stays ``down``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.contract import (
    DEVICE_RESULT_CODES,
    DeviceObservation,
    DeviceResult,
    DeviceState,
)
from agent.devices.inventory import DeviceConfig


@dataclass(frozen=True)
class Outcome:
    """What one check (or heartbeat, or missed heartbeat) found."""

    result: DeviceResult
    response_ms: float | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is DeviceResult.SUCCESS


class DeviceTracker:
    """One device's state machine; ``observe`` returns True when the state changed."""

    def __init__(self, device: DeviceConfig, started_at: datetime) -> None:
        self.device = device
        self.state = DeviceState.UNKNOWN
        self.changed_at = started_at
        self.misses = 0
        self.successes = 0
        self.last = Outcome(DeviceResult.NOT_CHECKED)

    def observe(self, outcome: Outcome, at: datetime) -> bool:
        self.last = outcome
        if outcome.ok:
            self.misses = 0
            self.successes += 1
            recovered = self.state is not DeviceState.DOWN or self.successes >= self.device.up_after
            new = DeviceState.UP if recovered else DeviceState.DOWN
        else:
            self.successes = 0
            self.misses += 1
            if self.misses >= self.device.down_after or self.state is DeviceState.DOWN:
                new = DeviceState.DOWN
            else:
                new = DeviceState.LATE
        if new is self.state:
            return False
        self.state = new
        self.changed_at = at
        return True

    @property
    def settling(self) -> bool:
        """A miss not yet confirmed, or a recovery not yet confirmed: check again soon."""
        if self.state is DeviceState.LATE:
            return True
        return self.state is DeviceState.DOWN and self.successes > 0

    def observation(self) -> DeviceObservation:
        return DeviceObservation(
            device_id=self.device.id,
            kind=self.device.kind,
            label=self.device.label,
            state=self.state,
            changed_at=self.changed_at,
            result=self.last.result.value,
            result_code=DEVICE_RESULT_CODES[self.last.result],
            response_ms=self.last.response_ms,
            detail=self.last.detail[:200] if self.last.detail else None,
        )
