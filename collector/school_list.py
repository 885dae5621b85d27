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

import bisect
import hashlib
from collections.abc import Mapping

from collector.influx.query import quote_literal
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
Place = tuple[str | None, int]  # region, offset


class SchoolList:
    """The ``school_list`` points one keeper writes, tick by tick.

    Schools whose hashes meet in a region take their hash's offset and the
    next odd ones in the order of their ids, so every keeper places the same
    schools alike, whatever order it met them in. A school that moves (another
    region, or a neighbour's arrival) is written in its new place at once, and
    its rows in the old place are deleted where no other school took it.
    """

    def __init__(self) -> None:
        self._places: dict[str, Place] = {}  # school -> where its row is
        self._groups: dict[tuple[str | None, int], list[str]] = {}  # (region, hash) -> ids
        self._left: set[Place] = set()  # places whose rows must go
        self._ahead: int | None = None  # the latest slot written whole (None: not known)
        self._pending: int | None = None  # ... once the last lines are written
        self._slots: list[int] = []  # the slots a reader may see at the last lines' tick

    def place(self, school_id: str, region: str | None, moved: set[str] | None = None) -> int:
        """The school's offset in its region's series; ``moved`` gets every school placed anew."""
        known = self._places.get(school_id)
        if known is not None and known[0] == region:
            return known[1]
        base = offset_of(school_id)
        if known is not None:
            self._groups[known[0], base].remove(school_id)
            self._left.add(known)
            self._arrange(known[0], base, moved)
        bisect.insort(self._groups.setdefault((region, base), []), school_id)
        self._arrange(region, base, moved)
        return self._places[school_id][1]

    def _arrange(self, region: str | None, base: int, moved: set[str] | None) -> None:
        for index, school_id in enumerate(self._groups[region, base]):
            place = (region, (base + 2 * index) % (2 * OFFSETS))
            known = self._places.get(school_id)
            if known != place:
                if known is not None and known[0] == region:
                    self._left.add(known)
                self._places[school_id] = place
                if moved is not None:
                    moved.add(school_id)

    def lines(self, rows: Mapping[str, Row], at: int, changed: set[str]) -> list[str]:
        """Points for a tick at ``at`` (ns): every school's row into the slots not yet
        written whole, and the rows in ``changed`` (and of schools placed anew) into the
        current and the next slot (and the previous one in a slot's first second, which
        readers then still see in part). Call :meth:`written` once they are stored."""
        changed = set(changed)
        for school_id, (region, _fields) in rows.items():
            self.place(school_id, region, changed)
        current = at // SLOT_NS * SLOT_NS
        ahead = current + SLOT_NS
        if self._ahead is None or self._ahead < current:  # a start, a failed write, a pause
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
            offset = self._places[school_id][1]
            values: dict[str, FieldValue] = {"school_id": school_id, **fields}
            found += [encode(SCHOOL_LIST, {"region": region}, values, slot + offset)
                      for slot in slots]  # fmt: skip
        self._ahead, self._pending = None, ahead
        self._slots = [current - SLOT_NS, current, ahead]  # a reader may yet see these
        return found

    def written(self) -> list[str]:
        """The last lines are stored: what to delete now (rows left in places nobody took)."""
        self._ahead = self._pending
        taken = set(self._places.values())
        found = [
            f'DELETE FROM "{SCHOOL_LIST}" WHERE "region" = {quote_literal(region or "")} '  # noqa: S608 - quoted
            f"AND time >= {slot + offset} AND time <= {slot + offset}"
            for region, offset in sorted(self._left - taken, key=repr)
            for slot in self._slots
        ]
        self._left = set()
        return found
