"""Every school in a few series: what the questions about all schools read.

InfluxDB 1.x pays for each series a query reads. With one ``school_state``
series per school, taking each school's newest point costs about 0.5 s at
7,400 schools whatever the history; the same rows in one series per region
cost about 40 ms. So the state keeper also writes ``school_list``: each
school's ``school_state`` fields, with ``school_id`` a field and ``region``
the only tag.

A reader must see each school once, without taking the newest point of a
series (a region's series holds all its schools). So rows sit in *slots* of
:data:`SLOT_S`: a school's row is at its slot's start plus the school's offset
(odd nanoseconds, under one second, from a hash of its id and unique in its
region). A reader takes ``time > now() - SLOT AND time <= now()``: for every
school that window holds exactly one of its rows, the current slot's or, in
the first second of a slot, the previous one's. Grafana's alert rules write
the window as ``time >= <ms> and time <= <ms>``; an odd offset never falls on
a millisecond, so the same holds.

The keeper writes a row again into the same place when it changes, and
InfluxDB replaces the point's fields. Each slot is written whole one slot
ahead, so a reader finds it filled at its start even when the keeper is late,
and the list stays up for one to two slots after a keeper stops. A field that
is no longer true is replaced at once, but one that disappears (a school's
last test leaving the 30-day window) stays in the slots already written: at
most two slots, 10 minutes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from collector.line_protocol import FieldValue, encode

SCHOOL_LIST = "school_list"
SLOT_S = 300
SLOT_NS = SLOT_S * 1_000_000_000
# What a reader scans: one slot, and nothing ahead of now (the next slot is written early).
LIST_WINDOW = f"time > now() - {SLOT_S // 60}m AND time <= now()"
OFFSETS = 500_000_000  # odd offsets below 1 s


def offset_of(school_id: str) -> int:
    """Where a school's row sits in a slot (ns, odd), before any collision in its region."""
    digest = hashlib.blake2b(school_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % OFFSETS * 2 + 1


Row = tuple[str | None, dict[str, FieldValue]]  # region, the school's fields


class SchoolList:
    """The ``school_list`` points one keeper writes, tick by tick."""

    def __init__(self) -> None:
        self._places: dict[str, tuple[str | None, int]] = {}  # school -> (region, offset)
        self._taken: dict[str | None, set[int]] = {}
        self._ahead: int | None = None  # the latest slot written whole

    def place(self, school_id: str, region: str | None) -> int:
        """The school's offset in its region's series; a collision moves the newcomer on."""
        known = self._places.get(school_id)
        if known is not None and known[0] == region:
            return known[1]
        if known is not None:
            self._taken[known[0]].discard(known[1])
        taken = self._taken.setdefault(region, set())
        offset = offset_of(school_id)
        while offset in taken:
            offset = (offset + 2) % (2 * OFFSETS)
        taken.add(offset)
        self._places[school_id] = (region, offset)
        return offset

    def lines(self, rows: Mapping[str, Row], at: int, changed: set[str]) -> list[str]:
        """Points for a tick at ``at`` (ns): every school's row into the slots not yet
        written whole, and the rows in ``changed`` into the current and the next slot (and
        the previous one in a slot's first second, which readers then still see in part)."""
        current = at // SLOT_NS * SLOT_NS
        ahead = current + SLOT_NS
        if self._ahead is None or self._ahead < current:  # a start, or a keeper held up
            whole = [current - SLOT_NS, current, ahead]  # the previous: its first second
        elif self._ahead == current:
            whole = [ahead]
        else:
            whole = []
        moved = [current, ahead]
        if at - current < OFFSETS * 2:  # in a slot's first second readers still see the last
            moved.insert(0, current - SLOT_NS)
        found: list[str] = []
        for school_id, (region, fields) in rows.items():
            slots = sorted({*whole, *moved}) if school_id in changed else whole
            if not slots:
                continue
            offset = self.place(school_id, region)
            values: dict[str, FieldValue] = {"school_id": school_id, **fields}
            found += [encode(SCHOOL_LIST, {"region": region}, values, slot + offset)
                      for slot in slots]  # fmt: skip
        self._ahead = ahead
        return found
