"""``school_list``: at any moment a reader of one slot sees every school once, with what the
keeper last said of it, in a real InfluxDB that replaces a point's fields in place."""

from __future__ import annotations

import itertools
import time

from collector.current_state import NS
from collector.influx.v1 import V1Writer
from collector.line_protocol import FieldValue
from collector.school_list import OFFSETS, SLOT_NS, Row, SchoolList, offset_of
from collector.settings import InfluxSettings
from tests.support.services import Influx

Schools = dict[str, Row]


def _writer(database: Influx) -> V1Writer:
    return V1Writer(InfluxSettings(url=database.url, database=database.database))


def _tick(
    database: Influx, listing: SchoolList, schools: Schools, at: int, changed: set[str]
) -> None:
    """What the keeper does: write the lines, then run what :meth:`written` returns."""
    _writer(database).write(listing.lines(schools, at, changed))
    for statement in listing.written():
        database.client.query(statement)


def _seen(database: Influx, moment: int) -> list[tuple[str | None, dict[str, FieldValue]]]:
    """What a reader sees at ``moment`` (ns): the window of collector.school_list.LIST_WINDOW."""
    series = database.client.query(
        f'SELECT * FROM "school_list" WHERE time > {moment - SLOT_NS} AND time <= {moment} '
        'GROUP BY "region"'
    )
    return [
        (s.tags.get("region") or None,
         {k: v for k, v in row.items() if v is not None and k not in ("time", "region")})
        for s in series for row in s.rows()
    ]  # fmt: skip


def _as_rows(seen: list[tuple[str | None, dict[str, FieldValue]]]) -> Schools:
    found: Schools = {}
    for region, row in seen:
        school_id = str(row.pop("school_id"))
        assert school_id not in found, f"{school_id} twice"
        found[school_id] = (region, row)
    return found


def _slot_start(hours_ago: int) -> int:
    return (time.time_ns() - hours_ago * 3600 * NS) // SLOT_NS * SLOT_NS


def _fleet(count: int) -> Schools:
    return {
        f"KZ-{n:03d}": (f"R{n % 3}", {"download_mean_mbps": float(n), "online": 1})
        for n in range(count)
    }


def test_a_reader_sees_each_school_once_with_its_latest_fields_at_any_moment(
    database: Influx,
) -> None:
    listing = SchoolList()
    schools = _fleet(60)
    start = _slot_start(3) + 240 * NS  # a minute before a slot ends: three boundaries ahead
    changed = set(schools)
    for tick in range(12):  # a tick a minute, as the keeper's
        at = start + tick * 60 * NS
        if tick:  # one school's speed changes at each tick, at a slot's start too
            school_id = f"KZ-{tick:03d}"
            region, fields = schools[school_id]
            schools[school_id] = (region, fields | {"download_mean_mbps": 100.0 + tick})
            changed = {school_id}
        _tick(database, listing, schools, at, changed)
        # just after the tick, in a slot's first second (rows of the slot before), before the next
        for moment in (at + 1, at + OFFSETS, at + 60 * NS - 1):
            assert _as_rows(_seen(database, moment)) == schools, (tick, moment - at)


def test_the_list_outlasts_a_late_keeper_by_a_slot_and_comes_back_whole(database: Influx) -> None:
    listing = SchoolList()
    schools = _fleet(30)
    slot = _slot_start(4)
    _tick(database, listing, schools, slot + 10 * NS, set(schools))
    assert _as_rows(_seen(database, slot + 2 * SLOT_NS - 1)) == schools  # written a slot ahead
    assert _seen(database, slot + 2 * SLOT_NS + 20 * NS) == []  # then it ends: no stale list
    late = slot + 2 * SLOT_NS + 30 * NS
    _tick(database, listing, schools, late, set())  # nothing changed, yet all written again
    for moment in (late + 1, slot + 3 * SLOT_NS + OFFSETS, slot + 4 * SLOT_NS - 1):
        assert _as_rows(_seen(database, moment)) == schools


def test_a_field_that_disappears_is_gone_within_two_slots(database: Influx) -> None:
    listing = SchoolList()
    schools = _fleet(5)
    region, fields = schools["KZ-001"]
    schools["KZ-001"] = (region, fields | {"version": "1.0.0"})
    start = _slot_start(5) + 30 * NS
    _tick(database, listing, schools, start, set(schools))
    schools["KZ-001"] = (region, fields)  # its last online status left the 30-day window
    gone_by = start + 2 * SLOT_NS  # the slots written with it have ended
    for tick in range(1, 13):
        at = start + tick * 60 * NS
        _tick(database, listing, schools, at, {"KZ-001"} if tick == 1 else set())
        row = _as_rows(_seen(database, at + 1))["KZ-001"]
        assert row[1]["download_mean_mbps"] == 1.0
        if at >= gone_by:
            assert "version" not in row[1], tick


def test_schools_whose_offsets_collide_each_keep_a_row(database: Influx) -> None:
    pair = _colliding()
    schools: Schools = {sid: ("R", {"download_mean_mbps": float(i)}) for i, sid in enumerate(pair)}
    listing = SchoolList()
    assert listing.place(pair[0], "R") != listing.place(pair[1], "R")
    assert listing.place(pair[1], "Q") == offset_of(pair[1])  # another region: its own place
    listing = SchoolList()
    at = _slot_start(6) + 10 * NS
    _tick(database, listing, schools, at, set(schools))
    assert _as_rows(_seen(database, at + 1)) == schools


def _colliding() -> tuple[str, str]:
    by_offset: dict[int, str] = {}
    for n in itertools.count():  # about 30,000 ids give a collision among 500 million offsets
        school_id = f"KZ-{n:06d}"
        other = by_offset.setdefault(offset_of(school_id), school_id)
        if other != school_id:
            return other, school_id
    raise AssertionError


def test_every_keeper_places_colliding_schools_alike_whatever_order_it_met_them_in() -> None:
    first, second = _colliding()
    one, other = SchoolList(), SchoolList()
    one.place(first, "R")
    one.place(second, "R")
    other.place(second, "R")  # a keeper that heard of it first
    assert other.place(first, "R") == one.place(first, "R")
    assert other.place(second, "R") == one.place(second, "R")


def test_a_school_that_moves_region_is_listed_once_in_its_new_region(database: Influx) -> None:
    listing = SchoolList()
    schools = _fleet(9)
    slot = _slot_start(7)
    _tick(database, listing, schools, slot + 100 * NS, set(schools))
    _region, fields = schools["KZ-004"]
    schools["KZ-004"] = ("R9", fields)  # a registry import moved it; nothing else changed
    at = slot + 160 * NS
    _tick(database, listing, schools, at, set())
    for moment in (at + 1, slot + SLOT_NS + OFFSETS, slot + 2 * SLOT_NS - 1):
        seen = _as_rows(_seen(database, moment))
        assert seen["KZ-004"][0] == "R9"
        assert seen == schools


def test_after_a_failed_write_the_next_tick_writes_the_list_whole(database: Influx) -> None:
    listing = SchoolList()
    schools = _fleet(12)
    slot = _slot_start(8)
    _tick(database, listing, schools, slot + 10 * NS, set(schools))
    listing.lines(schools, slot + SLOT_NS, set())  # the next slot's first tick: InfluxDB down
    at = slot + SLOT_NS + 60 * NS
    _tick(database, listing, schools, at, set())
    assert _as_rows(_seen(database, slot + 3 * SLOT_NS - 1)) == schools  # the one ahead too
