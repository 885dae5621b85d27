"""Fleet health: agents offline, agent and configuration versions by region, outbox backlog
and drops, data budgets."""

from __future__ import annotations

from grafana.parts import (
    FLEET_UID,
    HIDE_TIME,
    Json,
    by_name,
    dashboard,
    every_school,
    field,
    panel,
    school_column,
    target,
)

HAS_VERSION = "\"version\" != ''"  # a school without a version (no online status) has no slice


def schools_by(*fields: str) -> Json:
    """Grafana's groupBy: a row per combination of ``fields``, with its schools counted."""
    grouped: Json = {name: {"aggregations": [], "operation": "groupby"} for name in fields}
    grouped["school_id"] = {"aggregations": ["count"], "operation": "aggregate"}
    return {"id": "groupBy", "options": {"fields": grouped}}


def fleet() -> Json:
    panels = [
        panel(
            "Agents offline now (last status in 90 days; a school opens its page)",
            "table",
            [
                target(
                    every_school(
                        '"school_id", "status_ms", "online", "reason"', where='"online" = 0'
                    ),
                    fmt="table",
                )
            ],
            (0, 0, 12, 10),
            transformations=[HIDE_TIME],
            fieldConfig=field(
                "string",
                [
                    by_name("status_ms", unit="dateTimeAsIso", displayName="offline since"),
                    by_name("online", unit="bool_yes_no"),
                    school_column(),
                ],
            ),
        ),
        panel(
            "Agent versions (schools online in the last 30 days)",
            "piechart",
            [target(every_school('"school_id", "version"', where=HAS_VERSION, by=""), fmt="table")],
            (12, 0, 12, 10),
            transformations=[schools_by("version")],
            fieldConfig=field("short", decimals=0),
            options={
                # One slice per row (version), not one slice reduced from every row.
                "reduceOptions": {"values": True, "calcs": ["lastNotNull"], "fields": ""},
                "pieType": "pie",
                "legend": {
                    "displayMode": "table",
                    "placement": "right",
                    "showLegend": True,
                    "values": ["value", "percent"],
                },
            },
        ),
        panel(
            "Outbox backlog (messages waiting at agents)",
            "stat",
            [target(every_school('sum("outbox_messages")', by=""))],
            (0, 10, 8, 6),
            fieldConfig=field("short", decimals=0),
        ),
        panel(
            "Outbox drops",
            "stat",
            [target(every_school('sum("outbox_dropped")', by=""))],
            (8, 10, 8, 6),
            fieldConfig=field("short", decimals=0),
        ),
        panel(
            "Data budget used this month",
            "table",
            [
                target(
                    every_school(
                        '"school_id", "data_used_month_bytes" AS "used", '
                        '"data_budget_month_bytes" AS "budget"',
                        where='"data_used_month_bytes" >= 0',
                    ),
                    fmt="table",
                )
            ],
            (16, 10, 8, 6),
            fieldConfig=field("decbytes"),
            transformations=[HIDE_TIME],
        ),
        panel(
            "Agent and configuration versions by region (schools online in the last 30 days)",
            "table",
            [
                target(
                    every_school('"school_id", "version", "config_version"', where=HAS_VERSION),
                    fmt="table",
                )
            ],
            (0, 16, 24, 8),
            transformations=[
                schools_by("region", "version", "config_version"),
                {
                    "id": "organize",
                    "options": {
                        "renameByName": {
                            "version": "agent version",
                            "config_version": "configuration in force",
                            "school_id (count)": "schools",
                        }
                    },
                },
            ],
            fieldConfig=field("short", decimals=0),
        ),
    ]
    return dashboard(FLEET_UID, "School monitor: fleet health", panels)
