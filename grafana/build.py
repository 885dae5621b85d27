"""The Grafana dashboards as code: ``python grafana/build.py`` writes grafana/dashboards/*.json.

Every panel queries InfluxDB with InfluxQL through the datasource provisioned
in grafana/provisioning/datasources/ (uid ``school-monitor-influxdb``). The
measurements and fields are the README's; a test runs every query here, with
Grafana's macros substituted, against a real InfluxDB holding a simulated fleet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "influxdb", "uid": "school-monitor-influxdb"}
TAGS = ["school-monitor"]

# The national stats, in the order of the overview: metric, title.
STATS = [
    ("meets_standard", "Meet the 20 Mbps standard (30-day average)"),
    ("reporting", "Reporting (a test in 7 days)"),
    ("live", "Live (reported within 21 days)"),
    ("panic_button_live", "Live panic button"),
    ("turnstile_live", "Live turnstile"),
    ("police_link_live", "Live police-centre link"),
    ("panic_button_installed", "Panic button installed"),
    ("security_contract", "Security-service contract"),
]


def target(query: str, ref: str = "A", fmt: str = "time_series", alias: str = "") -> dict[str, Any]:
    found = {
        "refId": ref,
        "datasource": DATASOURCE,
        "rawQuery": True,
        "query": query,
        "resultFormat": fmt,
    }
    if alias:
        found["alias"] = alias
    return found


def panel(
    title: str,
    kind: str,
    targets: list[dict[str, Any]],
    grid: tuple[int, int, int, int],
    **options: Any,
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "title": title,
        "type": kind,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        **options,
    }


def percent_field(thresholds: list[tuple[float | None, str]]) -> dict[str, Any]:
    steps = [{"value": value, "color": color} for value, color in thresholds]
    return {
        "defaults": {
            "unit": "percent",
            "min": 0,
            "max": 100,
            "decimals": 1,
            "thresholds": {"mode": "absolute", "steps": steps},
        },
        "overrides": [],
    }


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
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
        "panels": panels,
        "templating": {"list": extra.pop("variables", [])},
        **extra,
    }


def national() -> dict[str, Any]:
    panels = []
    for index, (metric, title) in enumerate(STATS):
        query = (
            f'SELECT last("percent") FROM "history"."rollout" WHERE "level" = \'national\' '
            f"AND \"metric\" = '{metric}' AND $timeFilter GROUP BY time($__interval) fill(none)"
        )
        panels.append(
            panel(
                title,
                "stat",
                [target(query, alias=title)],
                (index % 4 * 6, index // 4 * 5, 6, 5),
                fieldConfig=percent_field([(None, "red"), (70, "orange"), (95, "green")]),
                options={"reduceOptions": {"calcs": ["lastNotNull"]}, "graphMode": "area"},
            )
        )
    panels.append(
        panel(
            "Schools by 30-day average download",
            "geomap",
            [
                target(
                    'SELECT last("latitude") AS "latitude", last("longitude") AS "longitude", '
                    'last("name") AS "name" FROM "history"."school" WHERE time <= now() '
                    'GROUP BY "school_id"',
                    "A",
                    "table",
                ),
                target(
                    'SELECT mean("download_mbps") AS "download_mbps" FROM "speed" WHERE '
                    '"result" = \'success\' AND $timeFilter GROUP BY "school_id"',
                    "B",
                    "table",
                ),
            ],
            (0, 10, 12, 14),
            transformations=[{"id": "joinByField", "options": {"byField": "school_id"}}],
            fieldConfig={
                "defaults": {
                    "unit": "Mbits",
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [{"value": None, "color": "red"}, {"value": 20, "color": "green"}],
                    },
                },
                "overrides": [],
            },
        )
    )
    panels.append(
        panel(
            "By region",
            "table",
            [
                target(
                    'SELECT last("percent") AS "percent" FROM "history"."rollout" WHERE "level" = '
                    '\'region\' AND $timeFilter GROUP BY "region", "metric"',
                    fmt="table",
                )
            ],
            (12, 10, 12, 14),
            transformations=[
                {
                    "id": "groupingToMatrix",
                    "options": {
                        "columnField": "metric",
                        "rowField": "region",
                        "valueField": "percent",
                    },
                }
            ],
            fieldConfig=percent_field([(None, "red"), (70, "orange"), (95, "green")]),
        )
    )
    panels.append(
        panel(
            "Rollout over time",
            "timeseries",
            [
                target(
                    'SELECT mean("percent") FROM "history"."rollout" '
                    "WHERE \"level\" = 'national' AND $timeFilter "
                    'GROUP BY time($__interval), "metric" fill(none)',
                    alias="$tag_metric",
                )
            ],
            (0, 24, 24, 9),
            fieldConfig=percent_field([(None, "blue")]),
        )
    )
    return dashboard("school-monitor-national", "School monitor: national overview", panels)


REGION_VARIABLE = {
    "name": "region",
    "label": "Region",
    "type": "query",
    "datasource": DATASOURCE,
    "query": 'SHOW TAG VALUES FROM "history"."school" WITH KEY = "region"',
    "refresh": 1,
    "sort": 1,
}
SCHOOL_VARIABLE = {
    "name": "school",
    "label": "School",
    "type": "query",
    "datasource": DATASOURCE,
    "query": 'SHOW TAG VALUES FROM "history"."school" WITH KEY = "school_id" '
    'WHERE "region" =~ /^$region$/',
    "refresh": 1,
    "sort": 1,
}


def drill_down() -> dict[str, Any]:
    threshold = {
        "defaults": {
            "unit": "Mbits",
            "custom": {"thresholdsStyle": {"mode": "line"}},
            "thresholds": {
                "mode": "absolute",
                "steps": [{"value": None, "color": "red"}, {"value": 20, "color": "green"}],
            },
        },
        "overrides": [],
    }
    panels = [
        panel(
            "Region $region: rollout",
            "table",
            [
                target(
                    'SELECT last("percent") AS "percent", last("schools") AS "schools", '
                    'last("total") AS "total" FROM "history"."rollout" '
                    'WHERE "region" =~ /^$region$/ AND $timeFilter GROUP BY "metric"',
                    fmt="table",
                )
            ],
            (0, 0, 24, 8),
        ),
        panel(
            "$school: download and upload against the 20 Mbps standard",
            "timeseries",
            [
                target(
                    'SELECT "download_mbps", "upload_mbps" FROM "speed" WHERE "school_id" =~ '
                    "/^$school$/ AND \"result\" = 'success' AND $timeFilter"
                )
            ],
            (0, 8, 16, 10),
            fieldConfig=threshold,
        ),
        panel(
            "$school: failed tests",
            "table",
            [
                target(
                    'SELECT "result", "error" FROM "speed" WHERE "school_id" =~ /^$school$/ '
                    "AND \"result\" != 'success' AND $timeFilter",
                    fmt="table",
                )
            ],
            (16, 8, 8, 10),
        ),
        panel(
            "$school: devices",
            "table",
            [
                target(
                    'SELECT last("state") AS "state", last("changed_at_ms") AS "since", '
                    'last("label") AS "label" FROM "device" WHERE "school_id" =~ /^$school$/ '
                    'AND $timeFilter GROUP BY "device_id", "kind"',
                    fmt="table",
                )
            ],
            (0, 18, 24, 8),
            fieldConfig={
                "defaults": {},
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": "since"},
                        "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
                    }
                ],
            },
        ),
    ]
    return dashboard(
        "school-monitor-school",
        "School monitor: region and school",
        panels,
        variables=[REGION_VARIABLE, SCHOOL_VARIABLE],
    )


DEVICES_NOT_UP = (
    'SELECT "state", "since_ms" FROM (SELECT last("state_code") AS "code", last("state") AS '
    '"state", last("changed_at_ms") AS "since_ms" FROM "device" WHERE time > now() - 15m '
    'GROUP BY "region", "school_id", "device_id", "kind") WHERE "code" >= 2 '
    'GROUP BY "region", "school_id", "device_id", "kind"'
)


def safety() -> dict[str, Any]:
    panels = [
        panel(
            "Devices down, late or stale now (longest first)",
            "table",
            [target(DEVICES_NOT_UP, fmt="table")],
            (0, 0, 24, 14),
            options={"sortBy": [{"displayName": "since_ms", "desc": False}]},
            fieldConfig={
                "defaults": {},
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": "since_ms"},
                        "properties": [
                            {"id": "unit", "value": "dateTimeAsIso"},
                            {"id": "displayName", "value": "since"},
                        ],
                    }
                ],
            },
        ),
        panel(
            "Devices not up, by kind",
            "bargauge",
            [
                target(
                    'SELECT count("state") FROM (' + DEVICES_NOT_UP + ') GROUP BY "kind"',
                    alias="$tag_kind",
                )
            ],
            (0, 14, 12, 8),
        ),
        panel(
            "Panic buttons down over time",
            "timeseries",
            [
                target(
                    'SELECT count("up") FROM "device" WHERE "kind" = \'panic_button\' AND '
                    '"up" = 0 AND $timeFilter GROUP BY time($__interval) fill(0)'
                )
            ],
            (12, 14, 12, 8),
        ),
    ]
    return dashboard("school-monitor-devices", "School monitor: safety devices", panels)


def fleet() -> dict[str, Any]:
    panels = [
        panel(
            "Agents offline now (last status in 90 days)",
            "table",
            [
                target(
                    'SELECT "online", "reason" FROM (SELECT last("online") AS "online", '
                    'last("reason") AS "reason" FROM "agent" WHERE time > now() - 90d GROUP BY '
                    '"region", "school_id") WHERE "online" = 0 GROUP BY "region", "school_id"',
                    fmt="table",
                )
            ],
            (0, 0, 12, 10),
        ),
        panel(
            "Agent versions",
            "piechart",
            [
                target(
                    'SELECT last("version") AS "version" FROM "agent" WHERE "status" = '
                    "'online' AND $timeFilter GROUP BY \"school_id\"",
                    fmt="table",
                )
            ],
            (12, 0, 12, 10),
            transformations=[
                {
                    "id": "groupBy",
                    "options": {
                        "fields": {
                            "version": {"aggregations": [], "operation": "groupby"},
                            "school_id": {"aggregations": ["count"], "operation": "aggregate"},
                        }
                    },
                }
            ],
        ),
        panel(
            "Outbox backlog (messages waiting at agents)",
            "stat",
            [
                target(
                    'SELECT sum("waiting") FROM (SELECT last("outbox_messages") AS "waiting" '
                    'FROM "agent" WHERE $timeFilter GROUP BY "school_id")'
                )
            ],
            (0, 10, 8, 6),
        ),
        panel(
            "Outbox drops",
            "stat",
            [
                target(
                    'SELECT sum("dropped") FROM (SELECT last("outbox_dropped") AS "dropped" '
                    'FROM "agent" WHERE $timeFilter GROUP BY "school_id")'
                )
            ],
            (8, 10, 8, 6),
        ),
        panel(
            "Data budget used this month",
            "table",
            [
                target(
                    'SELECT last("data_used_month_bytes") AS "used", '
                    'last("data_budget_month_bytes") AS "budget" FROM "agent" WHERE $timeFilter '
                    'GROUP BY "school_id"',
                    fmt="table",
                )
            ],
            (16, 10, 8, 6),
            fieldConfig={"defaults": {"unit": "decbytes"}, "overrides": []},
        ),
    ]
    return dashboard("school-monitor-fleet", "School monitor: fleet health", panels)


def pipeline() -> dict[str, Any]:
    panels = [
        panel(
            "Messages received per minute",
            "timeseries",
            [
                target(
                    'SELECT non_negative_derivative(last("received"), 1m) FROM "collector" '
                    'WHERE $timeFilter GROUP BY time($__interval), "collector_id" fill(none)',
                    alias="$tag_collector_id",
                )
            ],
            (0, 0, 12, 9),
        ),
        panel(
            "Rejections by reason (per interval)",
            "timeseries",
            [
                target(
                    'SELECT non_negative_difference(last("count")) FROM "collector_rejections" '
                    'WHERE $timeFilter GROUP BY time($__interval), "reason" fill(none)',
                    alias="$tag_reason",
                )
            ],
            (12, 0, 12, 9),
        ),
        panel(
            "Write retries, device report gaps, agent restarts",
            "stat",
            [
                target(
                    'SELECT last("write_retries") AS "write retries", last("device_report_gaps") '
                    'AS "report gaps", last("agent_restarts") AS "restarts" FROM "collector" '
                    "WHERE $timeFilter"
                )
            ],
            (0, 9, 24, 5),
        ),
        panel(
            "Ingest lag, measured to stored (p50 and p99)",
            "timeseries",
            [
                target(
                    'SELECT max("lag_p50_ms") AS "p50", max("lag_p99_ms") AS "p99" '
                    'FROM "collector" WHERE $timeFilter '
                    'GROUP BY time($__interval), "collector_id" fill(none)',
                    alias="$tag_collector_id $col",
                )
            ],
            (0, 14, 24, 8),
            fieldConfig={"defaults": {"unit": "ms"}, "overrides": []},
        ),
        panel(
            "Messages over a school's budget (rate_limited, per interval)",
            "timeseries",
            [
                target(
                    'SELECT sum("messages") FROM "collector_rate_limited" WHERE $timeFilter '
                    'GROUP BY time($__interval), "school_id" fill(none)',
                    alias="$tag_school_id",
                )
            ],
            (0, 22, 12, 8),
        ),
        panel(
            "Schools flooding now (rejected in the last 15 minutes)",
            "table",
            [
                target(
                    'SELECT sum("messages") AS "rejected" FROM "collector_rate_limited" '
                    'WHERE time > now() - 15m GROUP BY "school_id"',
                    fmt="table",
                )
            ],
            (12, 22, 12, 8),
            options={"sortBy": [{"displayName": "rejected", "desc": True}]},
        ),
    ]
    return dashboard("school-monitor-pipeline", "School monitor: pipeline health", panels)


DASHBOARDS = {
    "national-overview.json": national,
    "region-and-school.json": drill_down,
    "safety-devices.json": safety,
    "fleet-health.json": fleet,
    "pipeline-health.json": pipeline,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")  # noqa: T201 - a build script
    return 0


if __name__ == "__main__":
    sys.exit(main())
