"""Device observations as numbered :class:`~agent.contract.DevicesReport` messages.

Every report of one boot gets the next ``sequence`` number, so the collector
can see a lost report (a gap) and a restart (a new ``boot_id``). A long device
list is split over several reports to stay under the payload limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from agent.contract import DeviceObservation, DevicesReport, TopicKind, utc_now

DEVICES_PER_REPORT = 50  # about 700 bytes each at most: well under the 64 KiB payload limit

Publish = Callable[[DevicesReport, TopicKind], int]


class DeviceReporter:
    def __init__(
        self,
        publish: Publish,
        *,
        school_id: str,
        agent_id: str,
        boot_id: str,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._publish = publish
        self._school_id = school_id
        self._agent_id = agent_id
        self._boot_id = boot_id
        self._now = now
        self._sequence = 0
        self._lock = threading.Lock()

    def reports(self, observations: list[DeviceObservation], full: bool) -> list[DevicesReport]:
        """Number and wrap ``observations`` (one report per ``DEVICES_PER_REPORT``)."""
        chunks = [
            observations[i : i + DEVICES_PER_REPORT]
            for i in range(0, len(observations), DEVICES_PER_REPORT)
        ] or [[]]
        at = self._now()
        with self._lock:
            first = self._sequence
            self._sequence += len(chunks)
        return [
            DevicesReport(
                school_id=self._school_id,
                agent_id=self._agent_id,
                measured_at=at,
                boot_id=self._boot_id,
                sequence=first + number,
                full=full,
                devices=chunk,
            )
            for number, chunk in enumerate(chunks)
        ]

    def __call__(self, observations: list[DeviceObservation], full: bool) -> list[int]:
        """Publish the reports; return their MQTT message ids."""
        return [self._publish(r, TopicKind.DEVICES) for r in self.reports(observations, full)]
