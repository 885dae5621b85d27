"""Rollout percentages: the share of registered schools that meet each national target.

The denominator is always the registry (the newest import at or before the
moment asked for), never the schools that happen to report. Per metric, the
numerator comes from one InfluxQL query (``QUERIES``, also in the README), and
the percentage is numerator / registered schools, nationally and per region.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from agent.contract import DeviceKind
from collector.influx.query import InfluxQL
from collector.line_protocol import FieldValue, encode
from collector.registry import School, SchoolRegistry
from collector.registry_store import load_registry
from collector.rollout_rules import GIGA_MODERATE_FROM_MBPS, Rules
from collector.school_checks import SchoolChecks

ROLLOUT = "rollout"
# The schools the ministry chases, listed by the rollup on every run (raw retention).
ROLLOUT_SCHOOL = "rollout_school"
CHASE = ("at_risk", "dropped_off", "never_reported")
# A mean of exactly the threshold (19.5 and 20.5) may come back from InfluxDB as
# 19.999999999999996: it meets the standard.
EPSILON = 1e-6
NATIONAL = "national"
SAFETY_KINDS = (DeviceKind.PANIC_BUTTON, DeviceKind.TURNSTILE, DeviceKind.POLICE_LINK)


# metric -> what it counts, for people (README and --help)
DEFINITIONS: dict[str, str] = {
    "meets_standard": "30-day average download of successful tests >= the threshold",
    "meets_standard_latest": "the latest successful test in 30 days >= the threshold",
    "meets_per_student_standard": "30-day average download >= the school's standard: the "
    "threshold, or 50 kbps per student above 400 students when that is more",
    "giga_good": "30-day average download at or above the school's standard (Giga: good)",
    "giga_moderate": "30-day average download from 1 Mbps up to the school's standard "
    "(Giga: moderate)",
    "giga_bad": "30-day average download below 1 Mbps (Giga: bad)",
    "school_hours_available": "online in at least 99 % of its reachability checks in school "
    "hours (08:00-20:00 local) over 30 days",
    "availability_mean": "the mean availability in school hours over 30 days of the schools "
    "that made checks: a mean of percentages, not a share of schools ('schools' counts them)",
    "reporting": "a speed result (any result) in the last 7 days",
    "live": "the last speed result at most 21 days ago",
    "at_risk": "the last speed result 21 to 28 days ago",
    "dropped_off": "the last speed result more than 28 days ago",
    "never_reported": "no speed result at all",
    "panic_button_live": "a panic button up now (its latest state in 15 minutes)",
    "turnstile_live": "a turnstile up now",
    "police_link_live": "a police-centre link up now",
    "panic_button_installed": "a panic button installed (registry)",
    "turnstile_installed": "a turnstile installed (registry)",
    "police_link_installed": "a police-centre link installed (registry)",
    "security_contract": "a security-service contract (registry)",
}

# The InfluxQL behind each measured fact; {since}, {until} are nanosecond times.
QUERIES: dict[str, str] = {
    "mean_download": 'SELECT mean("download_mbps") FROM "speed" WHERE "result" = \'success\' '
    'AND time > {since} AND time <= {until} GROUP BY "school_id"',
    "latest_download": 'SELECT last("download_mbps") FROM "speed" WHERE "result" = \'success\' '
    'AND time > {since} AND time <= {until} GROUP BY "school_id"',
    "last_report": 'SELECT last("result_code") FROM "speed" WHERE time <= {until} '
    'GROUP BY "school_id"',
    # the same from the summaries, for schools silent for longer than raw points are kept
    "last_report_summary": 'SELECT last("tests") FROM "history"."speed_summary" '
    'WHERE time <= {until} GROUP BY "school_id"',
    "devices_up": 'SELECT last("up") FROM "device" WHERE time > {since} AND time <= {until} '
    'GROUP BY "school_id", "device_id", "kind"',
}
# Metrics whose figure is a mean over the schools with data, not a share of the registry.
MEANS = frozenset({"availability_mean"})


@dataclass
class Facts:
    """What InfluxDB says about each school at one moment."""

    mean_download: dict[str, float] = field(default_factory=dict)
    latest_download: dict[str, float] = field(default_factory=dict)
    last_report: dict[str, datetime] = field(default_factory=dict)
    live_kinds: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # checks passed and made in school hours over the availability window
    school_checks: dict[str, tuple[float, float]] = field(default_factory=dict)

    def availability(self, school_id: str) -> float | None:
        """Percent of the school's checks in school hours that passed; None without any."""
        passed, checks = self.school_checks.get(school_id, (0.0, 0.0))
        return 100.0 * passed / checks if checks else None


@dataclass(frozen=True)
class Row:
    metric: str
    region: str  # NATIONAL or a region's name
    schools: int
    total: int
    mean: float | None = None  # for MEANS: the mean over the ``schools`` with data

    @property
    def percent(self) -> float:
        if self.metric in MEANS:
            return math.nan if self.mean is None else self.mean
        return 100.0 * self.schools / self.total if self.total else math.nan


def read_facts(ql: InfluxQL, at: datetime, rules: Rules) -> Facts:
    until = _ns(at)
    window = _ns(at - timedelta(days=rules.speed_window_days))
    fresh = _ns(at - timedelta(minutes=rules.device_fresh_minutes))
    facts = Facts()
    for series in ql.query(QUERIES["mean_download"].format(since=window, until=until)):
        facts.mean_download[series.tags["school_id"]] = float(series.values[0][1])
    for series in ql.query(QUERIES["latest_download"].format(since=window, until=until)):
        facts.latest_download[series.tags["school_id"]] = float(series.values[0][1])
    for name in ("last_report_summary", "last_report"):  # raw, where kept, is exact
        for series in ql.query(QUERIES[name].format(until=until), epoch="ns"):
            moment = datetime.fromtimestamp(series.values[0][0] / 1e9, UTC)
            facts.last_report[series.tags["school_id"]] = moment
    for series in ql.query(QUERIES["devices_up"].format(since=fresh, until=until)):
        if series.values[0][1] == 1:
            facts.live_kinds[series.tags["school_id"]].add(series.tags["kind"])
    facts.school_checks = read_school_checks(ql, at, rules)
    return facts


def read_school_checks(ql: InfluxQL, at: datetime, rules: Rules) -> dict[str, tuple[float, float]]:
    """Each school's reachability checks passed and made in school hours, over the window
    (read a day at a time: collector/school_checks.py)."""
    return SchoolChecks(ql).window(at, rules.availability_window_days)


def speed_metrics(mean: float | None, students: int | None, rules: Rules) -> set[str]:
    """What a school's 30-day average download says: the standards, Giga's category (none
    without a successful test in the window)."""
    if mean is None:
        return set()
    found = {"meets_standard"} if mean >= rules.threshold_mbps - EPSILON else set()
    if mean >= rules.standard_mbps(students) - EPSILON:
        return found | {"meets_per_student_standard", "giga_good"}
    return found | {"giga_moderate" if mean >= GIGA_MODERATE_FROM_MBPS - EPSILON else "giga_bad"}


def school_metrics(school: School, facts: Facts, at: datetime, rules: Rules) -> set[str]:
    """The metrics this school counts towards."""
    sid = school.school_id
    found = speed_metrics(facts.mean_download.get(sid), school.students, rules)
    if facts.latest_download.get(sid, -1.0) >= rules.threshold_mbps - EPSILON:
        found.add("meets_standard_latest")
    last = facts.last_report.get(sid)
    if last is None:
        found.add("never_reported")
    else:
        age = at - last
        if age <= timedelta(days=rules.reporting_days):
            found.add("reporting")
        if age <= timedelta(days=rules.live_days):
            found.add("live")
        elif age <= timedelta(days=rules.dropped_days):
            found.add("at_risk")
        else:
            found.add("dropped_off")
    for kind in SAFETY_KINDS:
        if kind.value in facts.live_kinds.get(sid, set()):
            found.add(f"{kind.value}_live")
        if school.has(kind):
            found.add(f"{kind.value}_installed")
    if school.security_contract:
        found.add("security_contract")
    available = facts.availability(sid)
    if available is not None and available >= rules.availability_target - EPSILON:
        found.add("school_hours_available")
    return found


def compute(
    registry: SchoolRegistry,
    metrics: Mapping[str, set[str]],
    availability: Mapping[str, float] | None = None,
) -> list[Row]:
    """Every metric, nationally and for every region, in a stable order.

    ``metrics``: each school's metrics (:func:`school_metrics`), by school id;
    ``availability``: each measured school's availability in school hours (percent).
    """
    counts: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    sums: dict[str, float] = defaultdict(float)
    for school in registry:
        totals[NATIONAL] += 1
        totals[school.region] += 1
        for metric in metrics[school.school_id]:
            counts[metric, NATIONAL] += 1
            counts[metric, school.region] += 1
        available = (availability or {}).get(school.school_id)
        if available is not None:
            for region in (NATIONAL, school.region):
                counts["availability_mean", region] += 1
                sums[region] += available
    regions = [NATIONAL, *registry.regions()]

    def row(metric: str, region: str) -> Row:
        schools = counts[metric, region]
        if metric in MEANS:
            return Row(metric, region, schools, totals[region],
                       sums[region] / schools if schools else None)  # fmt: skip
        return Row(metric, region, schools, totals[region])

    return [row(metric, region) for region in regions for metric in DEFINITIONS]


@dataclass(frozen=True)
class Survey:
    """The registry, what InfluxDB says of each school, and its metrics, at one moment."""

    registry: SchoolRegistry
    facts: Facts
    at: datetime
    metrics: dict[str, set[str]]  # school id -> the metrics it counts towards

    def rows(self) -> list[Row]:
        availability = {
            school.school_id: found
            for school in self.registry
            if (found := self.facts.availability(school.school_id)) is not None
        }
        return compute(self.registry, self.metrics, availability)

    def chase_lines(self, stamp: datetime | None = None) -> list[str]:
        """``rollout_school``: a point per school at risk, dropped off or never reported.

        Stamped with the survey's moment, or ``stamp`` (a test's own clock).
        """
        at_ns = _ns(stamp or self.at)
        found = []
        for school in self.registry:
            for metric in sorted(self.metrics[school.school_id] & set(CHASE)):
                last = self.facts.last_report.get(school.school_id)
                tags = {"metric": metric, "region": school.region, "school_id": school.school_id}
                fields: dict[str, FieldValue] = {
                    "name": school.name,
                    "last_report_ms": None if last is None else _ns(last) // 1_000_000,
                }
                found.append(encode(ROLLOUT_SCHOOL, tags, fields, at_ns))
        return found


def survey(
    ql: InfluxQL, at: datetime | None = None, rules: Rules | None = None, facts: Facts | None = None
) -> Survey | None:
    """The facts at ``at`` (default now); None when no registry was imported by then.

    ``facts``: known already (the collector's current state); else read from raw points.
    """
    at = at or datetime.now(UTC)
    rules = rules or Rules()
    registry = load_registry(ql, before_ns=_ns(at))
    if registry is None:
        return None
    if facts is None:
        facts = read_facts(ql, at, rules)
    metrics = {school.school_id: school_metrics(school, facts, at, rules) for school in registry}
    return Survey(registry, facts, at, metrics)


def rollout(
    ql: InfluxQL, at: datetime | None = None, rules: Rules | None = None
) -> list[Row] | None:
    """The percentages at ``at`` (default now); None when no registry was imported by then."""
    found = survey(ql, at, rules)
    return None if found is None else found.rows()


def rollout_lines(rows: Iterable[Row], at: datetime) -> list[str]:
    """The ``rollout`` measurement: one point per metric and region."""
    at_ns = _ns(at)
    return [
        encode(
            ROLLOUT,
            {
                "metric": row.metric,
                "level": "national" if row.region == NATIONAL else "region",
                "region": None if row.region == NATIONAL else row.region,
            },
            {
                "schools": row.schools,
                "total": row.total,
                "percent": None if math.isnan(row.percent) else round(row.percent, 4),
            },
            at_ns,
        )
        for row in rows
    ]


def latest_rows(ql: InfluxQL, within: timedelta) -> tuple[datetime, list[Row]] | None:
    """The rows of the newest ``rollout`` run within ``within``, and its time; None if none.

    A collector's rollup or state keeper writes them every ``rollout.interval_s``
    from its current state: reading them costs one small query.
    """
    series = ql.query(
        'SELECT "schools", "total", "percent" '  # noqa: S608 - each series' newest point
        f'FROM "history"."{ROLLOUT}" WHERE time > now() - {int(within.total_seconds())}s '
        "AND time <= now() "  # a collector clock running fast cannot pin figures from the future
        'GROUP BY "metric", "level", "region" ORDER BY time DESC LIMIT 1',
        epoch="ns",
    )
    if not series:
        return None
    newest = max(s.values[0][0] for s in series)
    found = {
        (s.tags["metric"], s.tags.get("region") or NATIONAL): Row(
            s.tags["metric"], s.tags.get("region") or NATIONAL, int(s.values[0][1]),
            int(s.values[0][2]), s.values[0][3] if s.tags["metric"] in MEANS else None)
        for s in series
        if s.values[0][0] == newest and s.tags["metric"] in DEFINITIONS
    }  # fmt: skip
    regions = sorted({region for _, region in found} - {NATIONAL})
    rows = [
        found[metric, region]
        for region in [NATIONAL, *regions]
        for metric in DEFINITIONS
        if (metric, region) in found
    ]
    return datetime.fromtimestamp(newest / 1e9, UTC), rows


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
