"""What the collector remembers of each school's devices: the list, and report numbering.

- When a school's agent is lost (its Last Will arrives), every device the school
  is known to have gets a ``stale`` point: the agent cannot see them, which is
  not the same as their being down. The list comes from the reports seen since
  start, plus, for schools not seen yet, InfluxDB's own record (``lookup``).
- Each agent numbers its device reports per boot; a jump in ``sequence`` is a
  lost report (counted as a gap), a new ``boot_id`` is a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.contract import DevicesReport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KnownDevice:
    agent_id: str
    device_id: str
    kind: str
    label: str | None = None


Lookup = Callable[[str], list[KnownDevice]]  # school_id -> devices stored in InfluxDB


@dataclass(frozen=True)
class Numbering:
    """What a report's ``boot_id``/``sequence`` says about the ones before it."""

    missing: int = 0  # reports skipped since the last one seen from this boot
    restarted: bool = False
    repeated: bool = False  # seen before (a redelivery) or older than the last one


class DeviceBook:
    """Every device of every school seen since start: about 74,000 for 7,400 schools.

    A full report repeats the school's list every 5 minutes, and a drained
    backlog repeats each device thousands of times. A device whose report says
    what is known already keeps its entry: replacing it would allocate new
    long-lived objects (entry, id, label) for each one, scattered over the
    pymalloc arenas the batches use, and those arenas could not be given back.
    """

    def __init__(self, lookup: Lookup | None = None) -> None:
        self._lookup = lookup
        self._devices: dict[str, dict[str, KnownDevice]] = {}
        self._last: dict[tuple[str, str], tuple[str, int]] = {}  # (school, agent) -> boot, seq

    def remember(self, report: DevicesReport) -> Numbering:
        known = self._devices.setdefault(report.school_id, {})
        for device in report.devices:
            kind = device.kind.value
            found = known.get(device.device_id)
            if (
                found is not None
                and found.agent_id == report.agent_id
                and found.kind == kind
                and found.label == device.label
            ):
                continue  # as known: keep the objects held (see the class)
            known[device.device_id] = KnownDevice(
                report.agent_id, device.device_id, kind, device.label
            )
        return self._number(report)

    def devices_of(self, school_id: str) -> list[KnownDevice]:
        """Every device the school is known to have, from memory and InfluxDB."""
        found = dict(self._devices.get(school_id, {}))
        if self._lookup is not None:
            try:
                stored = self._lookup(school_id)
            except Exception as exc:  # noqa: BLE001 - the will is still stored without them
                log.warning("cannot list school %s's devices in InfluxDB: %s", school_id, exc)
                stored = []
            for device in stored:
                found.setdefault(device.device_id, device)
        return sorted(found.values(), key=lambda d: d.device_id)

    def _number(self, report: DevicesReport) -> Numbering:
        key = (report.school_id, report.agent_id)
        last = self._last.get(key)
        if last is None:
            self._last[key] = (report.boot_id, report.sequence)
            return Numbering()
        boot, sequence = last
        if boot != report.boot_id:
            self._last[key] = (report.boot_id, report.sequence)
            return Numbering(missing=report.sequence, restarted=True)
        if report.sequence <= sequence:
            return Numbering(repeated=True)
        self._last[key] = (boot, report.sequence)
        return Numbering(missing=report.sequence - sequence - 1)
