"""National overview: every rollout percentage, the map, the regions, the schools to chase."""

from __future__ import annotations

from collector.current_state import GIGA_CODES
from grafana.parts import (
    HIDE_TIME,
    LATEST_RUNS,
    NATIONAL_UID,
    STANDARD_MBPS,
    Json,
    by_name,
    dashboard,
    every_school,
    field,
    hide,
    panel,
    percent_field,
    region_link,
    school_column,
    school_link,
    steps,
    target,
)

# Each rollout metric as a stat, row by row: (metric, title, higher is better).
SPEED_STATS = [
    ("meets_standard", f"Meet {STANDARD_MBPS} Mbps (30-day average)", True),
    ("meets_standard_latest", f"Meet {STANDARD_MBPS} Mbps (latest test)", True),
    ("reporting", "Reporting (a test in 7 days)", True),
    ("live", "Live (a test within 21 days)", True),
    ("at_risk", "At risk (last test 21-28 days ago)", False),
    ("dropped_off", "Dropped off (no test for 28 days)", False),
    ("never_reported", "Never reported", False),
]
SAFETY_STATS = [
    ("panic_button_live", "Panic button live", True),
    ("panic_button_installed", "Panic button installed", True),
    ("turnstile_live", "Turnstile live", True),
    ("turnstile_installed", "Turnstile installed", True),
    ("police_link_live", "Police-centre link live", True),
    ("police_link_installed", "Police-centre link installed", True),
    ("security_contract", "Security-service contract", True),
]
# Giga's categories and the per-student standard, and availability in school hours.
GIGA_STATS = [
    ("meets_per_student_standard", "Meet the school's own standard (per student)", True),
    ("giga_good", "Giga: good (at or above the school's standard)", True),
    ("giga_moderate", "Giga: moderate (1 Mbps up to the school's standard)", False),
    ("giga_bad", "Giga: bad (below 1 Mbps)", False),
    ("school_hours_available", "Online in school hours (99 % of checks in 30 days)", True),
    ("availability_mean", "Mean availability in school hours (schools with checks)", True),
]  # fmt: skip
WIDTHS = [3, 3, 3, 3, 4, 4, 4]
GIGA_WIDTHS = [4, 4, 4, 4, 4, 4]
# Availability is judged against 99 %, not against a rollout share.
AVAILABILITY_COLOURS = [(None, "red"), (95, "orange"), (99, "green")]


def stat_query(metric: str) -> str:
    return (
        f'SELECT last("percent") FROM "history"."rollout" WHERE "level" = \'national\' '
        f"AND \"metric\" = '{metric}' AND $timeFilter GROUP BY time($__interval) fill(none)"
    )


def stats() -> list[Json]:
    found = []
    rows = ((SPEED_STATS, WIDTHS), (SAFETY_STATS, WIDTHS), (GIGA_STATS, GIGA_WIDTHS))
    for row, (metrics, widths) in enumerate(rows):
        x = 0
        for (metric, title, higher), width in zip(metrics, widths, strict=True):
            colours = (
                [(None, "red"), (70, "orange"), (95, "green")]
                if higher
                else [(None, "green"), (5, "orange"), (10, "red")]
            )
            if metric == "availability_mean":
                colours = AVAILABILITY_COLOURS
            found.append(
                panel(
                    title,
                    "stat",
                    [target(stat_query(metric), alias=title)],
                    (x, row * 5, width, 5),
                    fieldConfig=percent_field(*colours),
                    options={
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "graphMode": "area",
                        "colorMode": "value",
                        "textMode": "value",
                    },
                )
            )
            x += width
    return found


def school_map() -> Json:
    """Every registered school at its place, coloured by Giga's category of its 30-day
    average download (the collector's, with the school's own standard)."""
    schools = target(
        every_school(
            '"school_id", "name", "latitude", "longitude", '
            '"download_mean_mbps" AS "download_mbps", "giga_category"'
        ),
        "A",
        "table",
    )
    return panel(
        "Schools by Giga category of their 30-day average download: good (at or above the "
        f"school's standard: {STANDARD_MBPS} Mbps, or 50 kbps per student above 400), moderate "
        "(1 Mbps up to it), bad (below 1 Mbps), no data",
        "geomap",
        [schools],
        (0, 15, 12, 14),
        transformations=[hide("Time")],
        fieldConfig=field(
            "none",
            [
                by_name(
                    "download_mbps", unit="Mbits", displayName="30-day average download", decimals=1
                ),
                by_name("latitude", unit="none", decimals=4),
                by_name("longitude", unit="none", decimals=4),
                by_name("giga_category", displayName="Giga category", mappings=GIGA_MAPPINGS),
            ],
            links=[school_link("${__data.fields.school_id}", "${__data.fields.region}")],
            thresholds=steps((None, "red"), (1, "orange"), (2, "green")),
            color={"mode": "thresholds"},
        ),
        options={
            "view": {"id": "coords", "lat": 48.0, "lon": 67.0, "zoom": 4.2, "allLayers": True},
            "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
            "basemap": {"type": "default", "name": "Basemap", "config": {}},
            "layers": [
                {
                    "type": "markers",
                    "name": "Schools",
                    "tooltip": True,
                    "location": {
                        "mode": "coords",
                        "latitude": "latitude",
                        "longitude": "longitude",
                    },
                    "config": {
                        "showLegend": True,
                        "style": {
                            "color": {"field": "giga_category", "fixed": "#808080"},
                            "opacity": 0.8,
                            "size": {"fixed": 5, "min": 2, "max": 15},
                            "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                        },
                    },
                }
            ],
            "tooltip": {"mode": "details"},
        },
    )


# The collector's giga_category codes, by name.
GIGA_COLOURS = {"giga_bad": "red", "giga_moderate": "orange", "giga_good": "green"}
GIGA_MAPPINGS = [
    {
        "type": "value",
        "options": {
            str(code): {
                "text": name.removeprefix("giga_"),
                "color": GIGA_COLOURS[name],
                "index": code,
            }
            for name, code in GIGA_CODES.items()
        },
    },
    {
        "type": "special",
        "options": {"match": "null", "result": {"text": "no data", "color": "#808080", "index": 3}},
    },
]


def regions() -> Json:
    """Every percentage by region; a region's name opens its page."""
    return panel(
        "By region (a region opens its page)",
        "table",
        [
            target(
                'SELECT last("percent") AS "percent" FROM "history"."rollout" WHERE "level" = '
                f'\'region\' AND time > now() - {LATEST_RUNS} GROUP BY "region", "metric"',
                fmt="table",
            )
        ],
        (12, 15, 12, 14),
        transformations=[
            {
                "id": "groupingToMatrix",
                "options": {"columnField": "metric", "rowField": "region", "valueField": "percent"},
            }
        ],
        fieldConfig=percent_field(
            (None, "red"),
            (70, "orange"),
            (95, "green"),
        )
        | {
            "overrides": [
                # groupingToMatrix names its first column "<row field>\<column field>".
                by_name(
                    "region\\metric",
                    unit="string",
                    displayName="region",
                    links=[region_link("${__value.raw}")],
                ),
            ]
        },
    )


def chase() -> Json:
    """The schools to chase now, as the rollup listed them on its latest runs."""
    return panel(
        "Schools to chase: at risk, dropped off or never reported (a school opens its page)",
        "table",
        [
            target(
                'SELECT last("name") AS "name", last("last_report_ms") AS "last report" '
                f'FROM "rollout_school" WHERE time > now() - {LATEST_RUNS} '
                'GROUP BY "metric", "region", "school_id"',
                fmt="table",
            )
        ],
        (0, 29, 24, 10),
        fieldConfig=field(
            "none",
            [
                by_name("last report", unit="dateTimeAsIso", noValue="never"),
                school_column(),
                by_name("region", links=[region_link("${__value.raw}")]),
            ],
        ),
        options={"sortBy": [{"displayName": "last report", "desc": False}]},
        transformations=[HIDE_TIME],
    )


def over_time() -> Json:
    return panel(
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
        (0, 39, 24, 9),
        fieldConfig=percent_field((None, "blue")),
    )


def national() -> Json:
    return dashboard(
        NATIONAL_UID,
        "School monitor: national overview",
        [*stats(), school_map(), regions(), chase(), over_time()],
    )
