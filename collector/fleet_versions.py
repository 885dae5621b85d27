"""``school-collector fleet``: which school runs which agent version and configuration.

One read of ``school_list`` (every registered school's current state, one row
per school; collector/school_list.py) gives each school's agent version, the
remote configuration in force (``config_version``: ``local`` or e.g.
``all:4,region:2``), whether its agent is online and when it last spoke.

The *latest* configuration is what the fleet itself shows: for ``all``, the
highest version any school reports; for a region, the highest any school of
that region reports. A school is *behind* when its configuration lacks one of
those, and *silent* when no status came from it for a day (or ever).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from collector.influx.query import InfluxQL
from collector.school_list import LIST_WINDOW, SCHOOL_LIST

SILENT_AFTER_S = 86_400
QUERY = (
    'SELECT "school_id", "version", "config_version", "online", "status_ms" '  # noqa: S608
    f'FROM "state"."{SCHOOL_LIST}" WHERE {LIST_WINDOW} GROUP BY "region"'
)


@dataclass(frozen=True)
class AgentRow:
    school_id: str
    region: str
    version: str | None
    config_version: str | None
    online: bool | None
    last_status: str | None  # ISO 8601, UTC
    behind: bool  # its configuration lacks the latest version of all or of its region
    silent: bool  # no status for a day, or never


def _scopes(label: str | None) -> dict[str, int]:
    found = {}
    for part in (label or "").split(","):
        scope, _, version = part.partition(":")
        if version.isdigit():
            found[scope] = int(version)
    return found


def read_fleet(ql: InfluxQL, now: datetime | None = None) -> list[AgentRow]:
    """Every school in the current state, with its versions and whether it is behind."""
    now_ms = (now or datetime.now(UTC)).timestamp() * 1000
    raw = []
    for series in ql.query(QUERY):
        region = series.tags.get("region", "")
        for _time, school_id, version, config, online, status_ms in series.values:
            raw.append((school_id, region, version, config, online, status_ms))
    latest_all = max((_scopes(r[3]).get("all", 0) for r in raw), default=0)
    latest_region: dict[str, int] = {}
    for _, region, _, config, _, _ in raw:
        version = _scopes(config).get("region", 0)
        latest_region[region] = max(latest_region.get(region, 0), version)
    rows = []
    for school_id, region, version, config, online, status_ms in sorted(raw, key=lambda r: r[:2]):
        scopes = _scopes(config)
        behind = config is not None and (
            scopes.get("all", 0) < latest_all or scopes.get("region", 0) < latest_region[region]
        )
        rows.append(AgentRow(
            school_id=school_id, region=region, version=version or None,
            config_version=config or None,
            online=None if online is None else bool(online),
            last_status=(datetime.fromtimestamp(status_ms / 1000, UTC).isoformat(timespec="seconds")
                         if status_ms else None),
            behind=behind,
            silent=not status_ms or now_ms - status_ms > SILENT_AFTER_S * 1000,
        ))  # fmt: skip
    return rows


def render(rows: list[AgentRow], fmt: str) -> str:
    """``table`` (by region, then the schools behind and the silent ones), ``csv`` or ``json``."""
    if fmt == "json":
        return json.dumps([asdict(row) for row in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(AgentRow.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
        return out.getvalue()
    lines = [f"{'region':<20} {'agent version':<16} {'configuration':<24} schools"]
    counts = Counter((r.region, r.version or "-", r.config_version or "-") for r in rows)
    for (region, version, config), n in sorted(counts.items()):
        lines.append(f"{region:<20} {version:<16} {config:<24} {n}")
    behind = [r for r in rows if r.behind]
    silent = [r for r in rows if r.silent]
    lines.append("")
    for found, what in ((behind, "not on the latest configuration"),
                        (silent, "not heard from for a day or more")):  # fmt: skip
        named = ": " + ", ".join(r.school_id for r in found[:50]) if found else ""
        lines.append(f"{len(found)} school(s) {what}{named}")
    if len(behind) > 50 or len(silent) > 50:
        lines.append("(the first 50 of each; --format csv lists them all)")
    return "\n".join(lines)
