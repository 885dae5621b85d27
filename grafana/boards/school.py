"""Region and school: a region's percentages and schools, then one school's tests and devices."""

from __future__ import annotations

from grafana.parts import (
    DATASOURCE,
    HIDE_TIME,
    LATEST_RUNS,
    SCHOOL_UID,
    STANDARD_MBPS,
    Json,
    by_name,
    dashboard,
    field,
    newest,
    panel,
    percent_field,
    school_link,
    steps,
    target,
)

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


AVAILABILITY_TARGET = 99  # the collector's rollout.availability_target


def connectivity() -> list[Json]:
    """The school's reachability checks: availability per hour, and its outages."""
    school = '"school_id" =~ /^$school$/ AND $timeFilter'
    return [
        panel(
            "$school: availability (reachability checks passed, all hours)",
            "timeseries",
            [
                target(
                    'SELECT mean("availability") * 100 AS "availability" FROM "connectivity" '
                    f"WHERE {school} GROUP BY time($__interval) fill(none)",
                    alias="availability",
                )
            ],
            (0, 27, 12, 9),
            fieldConfig=field(
                "percent",
                min=0,
                max=100,
                custom={"thresholdsStyle": {"mode": "line"}},
                thresholds=steps((None, "red"), (AVAILABILITY_TARGET, "green")),
            ),
        ),
        panel(
            "$school: outage timeline (time down per interval, by cause)",
            "timeseries",
            [
                target(
                    'SELECT sum("down_no_route_s") AS "no route", sum("down_gateway_s") AS '
                    '"gateway", sum("down_dns_s") AS "DNS", sum("down_upstream_s") AS "upstream" '
                    f'FROM "connectivity" WHERE {school} GROUP BY time($__interval) fill(none)'
                )
            ],
            (12, 27, 12, 9),
            fieldConfig=field(
                "s",
                custom={"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}},
            ),
        ),
        panel(
            "$school: outages (start, end, cause; longest first)",
            "table",
            [
                target(
                    'SELECT "duration_s" AS "duration", "ended_at_ms" AS "ended", "detail" '
                    f'FROM "outage" WHERE {school} GROUP BY "cause"',
                    fmt="table",
                )
            ],
            (0, 36, 24, 8),
            fieldConfig=field(
                "string",
                [
                    by_name("Time", unit="dateTimeAsIso", displayName="started"),
                    by_name("ended", unit="dateTimeAsIso"),
                    by_name("duration", unit="s"),
                ],
            ),
            options={"sortBy": [{"displayName": "duration", "desc": True}]},
        ),
    ]


def school() -> Json:
    standard = field(
        "Mbits",
        custom={"thresholdsStyle": {"mode": "line"}},
        thresholds=steps((None, "red"), (STANDARD_MBPS, "green")),
    )
    panels = [
        panel(
            "Region $region: rollout",
            "table",
            [
                target(
                    'SELECT last("percent") AS "percent", last("schools") AS "schools", '
                    'last("total") AS "total" FROM "history"."rollout" '
                    'WHERE "region" =~ /^$region$/ AND time > now() - '
                    f'{LATEST_RUNS} GROUP BY "metric"',
                    fmt="table",
                )
            ],
            (0, 0, 12, 9),
            fieldConfig=percent_field((None, "text"))
            | {"overrides": [by_name("schools", unit="short"), by_name("total", unit="short")]},
            transformations=[HIDE_TIME],
        ),
        panel(
            "Schools of $region (a school opens its page)",
            "table",
            [
                target(
                    newest(
                        '"download_mean_mbps" AS "average", "download_latest_mbps" AS "latest", '
                        '"tests" AS "tests"',
                        groups='"school_id"',
                        inner='"region" =~ /^$region$/',
                    ),
                    fmt="table",
                )
            ],
            (12, 0, 12, 9),
            fieldConfig=field(
                "Mbits",
                [
                    by_name("tests", unit="short"),
                    by_name(
                        "school_id",
                        unit="string",
                        links=[school_link("${__value.raw}", "${region}")],
                    ),
                ],
                decimals=1,
                thresholds=steps((None, "red"), (1, "orange"), (STANDARD_MBPS, "green")),
            ),
            options={"sortBy": [{"displayName": "average", "desc": False}]},
            transformations=[HIDE_TIME],
        ),
        panel(
            f"$school: download and upload against the {STANDARD_MBPS} Mbps standard",
            "timeseries",
            [
                # One series per method: figures from before and after the December 2026
                # method (agent/README, "How speed is measured") are told apart; an
                # older agent's points have no method tag: "download_mbps ()".
                target(
                    'SELECT "download_mbps", "upload_mbps" FROM "speed" WHERE "school_id" =~ '
                    '/^$school$/ AND "result" = \'success\' AND $timeFilter GROUP BY "method"',
                    alias="$col ($tag_method)",
                )
            ],
            (0, 9, 16, 10),
            fieldConfig=standard,
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
            (16, 9, 8, 10),
            fieldConfig=field("string", [by_name("Time", unit="dateTimeAsIso")]),
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
            (0, 19, 24, 8),
            fieldConfig=field("string", [by_name("since", unit="dateTimeAsIso")]),
            transformations=[HIDE_TIME],
        ),
        *connectivity(),
    ]
    return dashboard(
        SCHOOL_UID,
        "School monitor: region and school",
        panels,
        variables=[REGION_VARIABLE, SCHOOL_VARIABLE],
    )
