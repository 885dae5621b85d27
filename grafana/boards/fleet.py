"""Fleet health: agents offline, agent versions, outbox backlog and drops, data budgets."""

from __future__ import annotations

from grafana.parts import (
    FLEET_UID,
    HIDE_TIME,
    Json,
    by_name,
    dashboard,
    field,
    panel,
    school_column,
    target,
)


def fleet() -> Json:
    panels = [
        panel(
            "Agents offline now (last status in 90 days; a school opens its page)",
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
            fieldConfig=field(
                "string",
                [
                    by_name("Time", unit="dateTimeAsIso", displayName="offline since"),
                    by_name("online", unit="bool_yes_no"),
                    school_column(),
                ],
            ),
        ),
        panel(
            "Agent versions (schools online in the time range)",
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
            [
                target(
                    'SELECT sum("waiting") FROM (SELECT last("outbox_messages") AS "waiting" '
                    'FROM "agent" WHERE $timeFilter GROUP BY "school_id")'
                )
            ],
            (0, 10, 8, 6),
            fieldConfig=field("short", decimals=0),
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
            fieldConfig=field("short", decimals=0),
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
            fieldConfig=field("decbytes"),
            transformations=[HIDE_TIME],
        ),
    ]
    return dashboard(FLEET_UID, "School monitor: fleet health", panels)
