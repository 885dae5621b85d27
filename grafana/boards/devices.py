"""Safety devices: every device not up now, the count by kind, panic buttons down over time."""

from __future__ import annotations

from collector.current_state import DEVICE_STATE
from grafana.parts import (
    DEVICE_GROUPS,
    DEVICES_UID,
    HIDE_TIME,
    Json,
    by_name,
    dashboard,
    field,
    newest,
    panel,
    school_column,
    target,
)

# Devices down, late or stale, with a state reported in the last 15 minutes.
DEVICES_NOT_UP = newest('"state", "since_ms"', DEVICE_STATE, DEVICE_GROUPS, where='"listed" = 1')
# The collector counts devices not up every rollout.interval_s (5 minutes).
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
                    newest(
                        'count("state")',
                        DEVICE_STATE,
                        DEVICE_GROUPS,
                        where='"listed" = 1',
                        by='"kind"',
                    ),
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
                    'SELECT last("devices") FROM "history"."devices_not_up" WHERE "kind" = '
                    "'panic_button' AND \"state\" = 'down' AND $timeFilter "
                    "GROUP BY time($__interval) fill(none)",
                    alias="panic buttons down",
                )
            ],
            (12, 14, 12, 8),
            interval=REPORT_PERIOD,
            fieldConfig=field("short", decimals=0),
        ),
    ]
    return dashboard(DEVICES_UID, "School monitor: safety devices", panels)
