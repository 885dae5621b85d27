"""Pipeline health: what each collector received, rejected, retried, its lag, and floods.

The ``collector`` and ``collector_rejections`` counters are cumulative per
collector since it started, so every panel takes differences per
``collector_id`` first and only then adds collectors up.
"""

from __future__ import annotations

from grafana.parts import (
    HIDE_TIME,
    PIPELINE_UID,
    Json,
    dashboard,
    field,
    panel,
    target,
)

COUNTERS = ("write_retries", "device_report_gaps", "agent_restarts")


def increase(counter: str, alias: str) -> str:
    """``counter``'s increase over the time range, per collector, then summed."""
    return (
        f'SELECT sum("d") AS "{alias}" FROM (SELECT non_negative_difference(last("{counter}")) '
        'AS "d" FROM "collector" WHERE $timeFilter GROUP BY time($__interval), "collector_id") '
        "WHERE $timeFilter"
    )


def pipeline() -> Json:
    panels = [
        panel(
            "Messages received per minute, per collector",
            "timeseries",
            [
                target(
                    'SELECT non_negative_derivative(last("received"), 1m) FROM "collector" '
                    'WHERE $timeFilter GROUP BY time($__interval), "collector_id" fill(none)',
                    alias="$tag_collector_id",
                )
            ],
            (0, 0, 12, 9),
            fieldConfig=field("cpm"),
        ),
        panel(
            "Rejections by reason (per interval, all collectors)",
            "timeseries",
            [
                target(
                    'SELECT sum("d") FROM (SELECT non_negative_difference(last("count")) AS "d" '
                    'FROM "collector_rejections" WHERE $timeFilter '
                    'GROUP BY time($__interval), "reason", "collector_id") '
                    'WHERE $timeFilter GROUP BY time($__interval), "reason" fill(none)',
                    alias="$tag_reason",
                )
            ],
            (12, 0, 12, 9),
            fieldConfig=field("short", decimals=0),
        ),
        panel(
            "Write retries, device report gaps, agent restarts (in the time range, all collectors)",
            "stat",
            [
                target(increase(counter, counter.replace("_", " ")), ref)
                for counter, ref in zip(COUNTERS, "ABC", strict=True)
            ],
            (0, 9, 24, 5),
            fieldConfig=field("short", decimals=0),
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
            fieldConfig=field("ms"),
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
            fieldConfig=field("short", decimals=0),
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
            fieldConfig=field("short", decimals=0),
            transformations=[HIDE_TIME],
        ),
    ]
    return dashboard(PIPELINE_UID, "School monitor: pipeline health", panels)
