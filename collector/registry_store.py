"""The school registry in InfluxDB: imported as a whole, read back as the latest import.

``school-collector registry import FILE.csv`` validates the whole file first
(see :mod:`collector.registry`), then writes one ``school`` point per school,
all at the same timestamp, and last a ``registry_import`` point that marks the
import complete, both in the ``history`` retention policy: the registry outlives
the raw points (:mod:`collector.retention`). Readers take the newest complete
import, so an import that fails half-way is never used, and a school left out
of a newer file is no longer counted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from agent.contract import DeviceKind
from collector.influx import HISTORY, InfluxWriter, make_history_writer
from collector.influx.query import InfluxQL
from collector.line_protocol import encode
from collector.registry import School, SchoolRegistry
from collector.settings import InfluxSettings

SCHOOL = "school"
REGISTRY_IMPORT = "registry_import"
CHUNK = 5000


def school_line(school: School, import_id: str, at_ns: int) -> str:
    fields: dict[str, Any] = {
        "name": school.name,
        "latitude": school.latitude,
        "longitude": school.longitude,
        "students": school.students,
        "staff": school.staff,
        "security_contract": None
        if school.security_contract is None
        else int(school.security_contract),
        "import_id": import_id,
    }
    for kind in DeviceKind:
        fields[f"{kind.value}_installed"] = int(school.has(kind))
    tags = {
        "school_id": school.school_id,
        "region": school.region,
        "district": school.district,
        "area": school.area,
    }
    return encode(SCHOOL, tags, fields, at_ns)


def import_registry(
    registry: SchoolRegistry, influx: InfluxSettings, source: str, at_ns: int | None = None
) -> tuple[str, int]:
    """Write every school, then the completion mark; return (import id, timestamp)."""
    writer = make_history_writer(influx)
    try:
        return _write_import(registry, writer, source, at_ns)
    finally:
        writer.close()


def _write_import(
    registry: SchoolRegistry, writer: InfluxWriter, source: str, at_ns: int | None
) -> tuple[str, int]:
    at = at_ns if at_ns is not None else time.time_ns()
    import_id = uuid.uuid4().hex
    lines = [school_line(school, import_id, at) for school in registry]
    for start in range(0, len(lines), CHUNK):
        writer.write(lines[start : start + CHUNK])
    mark = encode(
        REGISTRY_IMPORT,
        {},
        {
            "schools": len(registry),
            "regions": len(registry.regions()),
            "import_id": import_id,
            "source": source[:200],
        },
        at,
    )
    writer.write([mark])
    return import_id, at


def latest_import_time(ql: InfluxQL, before_ns: int | None = None) -> int | None:
    """The timestamp (ns) of the newest complete import (at or before ``before_ns``)."""
    bound = f" WHERE time <= {int(before_ns)}" if before_ns is not None else ""
    statement = f'SELECT last("schools") FROM "{HISTORY}"."registry_import"{bound}'  # noqa: S608
    found = ql.query(statement, epoch="ns")
    if not found or not found[0].values:
        return None
    return int(found[0].values[0][0])


def load_registry(ql: InfluxQL, before_ns: int | None = None) -> SchoolRegistry | None:
    """The newest complete import (at or before ``before_ns``); None when there is none."""
    when = latest_import_time(ql, before_ns)
    if when is None:
        return None
    return registry_at(ql, when)


class NewerRegistry:
    """The newest complete import, read only when it is newer than the one read last.

    The pipeline asks every ``registry_refresh_s``. Reading 7,400 schools again
    each time cost the collector about 9 MB of resident memory for good while it
    drained a backlog: the reply is parsed while the store thread's batches hold
    the heap, and the new registry's objects then pin the pymalloc arenas that
    the parse spread over. Each import has its own ``import_id`` in its completion
    mark: one ``last()`` query says whether there is a newer one.
    """

    def __init__(self, ql: InfluxQL) -> None:
        self._ql = ql
        self._read: tuple[int, str] | None = None  # (timestamp, import id) read last

    def __call__(self) -> SchoolRegistry | None:
        """The newest import if it is not the one read last; None otherwise (or none)."""
        found = self._ql.query(
            f'SELECT last("import_id") FROM "{HISTORY}"."{REGISTRY_IMPORT}"',  # noqa: S608
            epoch="ns",
        )
        if not found or not found[0].values:
            return None
        when, import_id = found[0].values[0][:2]
        newest = (int(when), str(import_id))
        if newest == self._read:
            return None
        registry = registry_at(self._ql, newest[0])
        self._read = newest
        return registry


def registry_at(ql: InfluxQL, when: int) -> SchoolRegistry:
    """The import whose schools were written at ``when`` (ns)."""
    series = ql.query(
        f'SELECT * FROM "{HISTORY}"."school" WHERE time >= {int(when)} AND time <= {int(when)}',  # noqa: S608
        epoch="ns",
    )
    schools = [_school(row) for s in series for row in s.rows()]
    return SchoolRegistry(schools)


def _school(row: dict[str, Any]) -> School:
    contract = row.get("security_contract")
    return School(
        school_id=row["school_id"],
        region=row["region"],
        name=row.get("name") or "",
        district=row.get("district") or None,
        area=row.get("area") or None,
        latitude=row.get("latitude"),
        longitude=row.get("longitude"),
        students=row.get("students"),
        staff=row.get("staff"),
        devices=frozenset(kind for kind in DeviceKind if row.get(f"{kind.value}_installed")),
        security_contract=None if contract is None else bool(contract),
    )
