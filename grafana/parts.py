"""The pieces every dashboard is built from: queries, panels, fields, links.

Every panel queries InfluxDB with InfluxQL through the datasource provisioned
in grafana/provisioning/datasources/ (uid ``school-monitor-influxdb``).
"""

from __future__ import annotations

import re
from typing import Any

from collector.current_state import DEVICE_STATE, SCHOOL_ALERT, SCHOOL_STATE, WINDOW
from collector.school_list import LIST_WINDOW, SCHOOL_LIST

DATASOURCE = {"type": "influxdb", "uid": "school-monitor-influxdb"}
TAGS = ["school-monitor"]
STANDARD_MBPS = 20  # the national standard; the collector's rollout.threshold_mbps

NATIONAL_UID = "school-monitor-national"
SCHOOL_UID = "school-monitor-school"
DEVICES_UID = "school-monitor-devices"
FLEET_UID = "school-monitor-fleet"
PIPELINE_UID = "school-monitor-pipeline"

Json = dict[str, Any]


def target(query: str, ref: str = "A", fmt: str = "time_series", alias: str = "") -> Json:
    found: Json = {
        "refId": ref,
        "datasource": DATASOURCE,
        "rawQuery": True,
        "query": query,
        "resultFormat": fmt,
    }
    if alias:
        found["alias"] = alias
    return found


# The collector's rollup writes the rollout and the schools to chase on every run: every
# rollout.interval_s (at most 10 minutes), a run postponed by at most one interval while a
# backlog drains. Panels of the latest figures read this far back.
LATEST_RUNS = "25m"
SCHOOL_GROUPS = '"region", "school_id"'
DEVICE_GROUPS = '"region", "school_id", "device_id", "kind"'


def newest(
    columns: str,
    measurement: str = SCHOOL_STATE,
    groups: str = SCHOOL_GROUPS,
    *,
    where: str = "",
    inner: str = "",
    window: str = f"time > now() - {WINDOW}",
    by: str | None = None,
) -> str:
    """``columns`` of each series' newest point in the current state (collector.current_state).

    The inner query takes each series' newest point: only the fields the outer
    query uses, and a field every point has (:data:`WHOLE`), so that a point
    without the others still counts as the newest (a field left out of it is no
    longer true). InfluxDB 1.x pays per series and per field read, so ``*``
    would cost twice as much. ``inner`` filters on tags there, ``where`` on
    fields outside. Both levels are bounded in time: InfluxDB 1.x scans every
    shard for a subquery without an outer bound. ``window``: a time condition
    (an alert's ``$timeFilter``). ``by``: the outer GROUP BY, when it is not
    ``groups`` (an aggregate over every series: "").
    """
    inner_where = f"{inner} AND {window}" if inner else window
    outer_where = f"{where} AND {window}" if where else window
    by = groups if by is None else by
    fields = inner_fields(measurement, columns, where)
    return (
        f'SELECT {columns} FROM (SELECT {fields} FROM "state"."{measurement}" '
        f"WHERE {inner_where} GROUP BY {groups} ORDER BY time DESC LIMIT 1) "
        f"WHERE {outer_where} " + (f"GROUP BY {by} " if by else "") + "ORDER BY time DESC"
    )


# A field on every point of each state measurement (collector.current_state writes them always).
WHOLE = {SCHOOL_STATE: "panic_button_live", DEVICE_STATE: "listed", SCHOOL_ALERT: "flagged"}


def every_school(columns: str, *, where: str = "", by: str = '"region"') -> str:
    """``columns`` of every school's row in ``school_list`` (collector.school_list).

    Its window holds one row per school; it reads one series per region
    instead of one per school. ``where`` filters on fields, ``by`` groups
    (``""``: an aggregate over every school).
    """
    window = f"{where} AND {LIST_WINDOW}" if where else LIST_WINDOW
    group = f" GROUP BY {by}" if by else ""
    return f'SELECT {columns} FROM "state"."{SCHOOL_LIST}" WHERE {window}{group}'


def inner_fields(measurement: str, *used: str) -> str:
    """The inner query's fields: :data:`WHOLE`'s, then every field named in ``used``."""
    names = [WHOLE[measurement]]
    for text in used:
        for name in re.findall(r'(?<!AS )"(\w+)"', text):
            if name not in names:
                names.append(name)
    return ", ".join(f'"{name}"' for name in names)


def panel(
    title: str,
    kind: str,
    targets: list[Json],
    grid: tuple[int, int, int, int],
    **options: Any,
) -> Json:
    x, y, w, h = grid
    return {
        "title": title,
        "type": kind,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        **options,
    }


def steps(*thresholds: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"value": value, "color": color} for value, color in thresholds],
    }


def field(unit: str, overrides: list[Json] | None = None, **defaults: Any) -> Json:
    """A panel's fieldConfig: ``unit`` for every field unless an override says otherwise."""
    return {"defaults": {"unit": unit, **defaults}, "overrides": overrides or []}


def percent_field(*thresholds: tuple[float | None, str]) -> Json:
    return field("percent", min=0, max=100, decimals=1, thresholds=steps(*thresholds))


def by_name(name: str, **properties: Any) -> Json:
    """An override: ``properties`` (Grafana's ids, e.g. unit, links) for the field ``name``."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def school_link(school: str, region: str) -> Json:
    """A data link to the school's page; ``school`` and ``region`` are Grafana expressions."""
    return {
        "title": "Open the school",
        "url": f"/d/{SCHOOL_UID}/?var-region={region}&var-school={school}&${{__url_time_range}}",
    }


def school_column() -> Json:
    """An override: a table's ``school_id`` cells open that school (rows with a region)."""
    return by_name("school_id", links=[school_link("${__value.raw}", "${__data.fields.region}")])


def hide(*names: str) -> Json:
    """A transformation: leave ``names`` out of the table (InfluxQL's Time, mostly)."""
    return {"id": "organize", "options": {"excludeByName": dict.fromkeys(names, True)}}


HIDE_TIME = hide("Time")


def region_link(region: str) -> Json:
    return {
        "title": "Open the region",
        "url": f"/d/{SCHOOL_UID}/?var-region={region}&${{__url_time_range}}",
    }


def dashboard(uid: str, title: str, panels: list[Json], **extra: Any) -> Json:
    for number, item in enumerate(panels, 1):
        item["id"] = number
    return {
        "uid": uid,
        "title": title,
        "tags": TAGS,
        "timezone": "Asia/Almaty",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "5m",
        "time": {"from": "now-30d", "to": "now"},
        "links": [
            {
                "title": "School monitor",
                "type": "dashboards",
                "tags": TAGS,
                "asDropdown": True,
                "keepTime": True,
                "includeVars": False,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "panels": panels,
        "templating": {"list": extra.pop("variables", [])},
        **extra,
    }
