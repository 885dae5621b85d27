"""Safety devices: every device not up now, the count by kind, panic buttons down over time."""

from __future__ import annotations

from grafana.parts import (
    DEVICES_UID,
    HIDE_TIME,
    Json,
    by_name,
    dashboard,
    field,
    panel,
    school_column,
    target,
)

DEVICES_NOT_UP = (
    'SELECT "state", "since_ms" FROM (SELECT last("state_code") AS "code", last("state") AS '
    '"state", last("changed_at_ms") AS "since_ms" FROM "device" WHERE time > now() - 15m '
    'GROUP BY "region", "school_id", "device_id", "kind") WHERE "code" >= 2 '
    'GROUP BY "region", "school_id", "device_id", "kind"'
)
# A device reports at least every 5 minutes, so each interval of at least 5 minutes holds
# every device's state; the last one in an interval is its state at the interval's end.
REPORT_PERIOD = "5m"


def devices() -> Json:
    panels = [
        panel(
            "Devices down, late or stale now (longest first; a school opens its page)",
            "table",
            [target(DEVICES_NOT_UP, fmt="table")],
            (0, 0, 24, 14),
            options={"sortBy": [{"displayName": "since", "desc": False}]},
            fieldConfig=field(
                "string",
                [
                    by_name("since_ms", unit="dateTimeAsIso", displayName="since"),
                    school_column(),
                ],
            ),
            transformations=[HIDE_TIME],
        ),
        panel(
            "Devices not up now, by kind",
            "bargauge",
            [
                target(
                    'SELECT count("state") FROM (' + DEVICES_NOT_UP + ') GROUP BY "kind"',
                    alias="$tag_kind",
                )
            ],
            (0, 14, 12, 8),
            fieldConfig=field("short", decimals=0),
        ),
        panel(
            "Panic buttons down (at each interval's end)",
            "timeseries",
            [
                target(
                    'SELECT count("code") FROM (SELECT last("state_code") AS "code" FROM "device" '
                    "WHERE \"kind\" = 'panic_button' AND $timeFilter GROUP BY time($__interval), "
                    '"school_id", "device_id") WHERE "code" = 3 AND $timeFilter '
                    "GROUP BY time($__interval) fill(0)",
                    alias="panic buttons down",
                )
            ],
            (12, 14, 12, 8),
            interval=REPORT_PERIOD,
            fieldConfig=field("short", decimals=0),
        ),
    ]
    return dashboard(DEVICES_UID, "School monitor: safety devices", panels)
