"""``school-collector report``: one month for people who do not open Grafana.

A single HTML file with everything inline (styles, and charts drawn by
matplotlib as SVG): it opens offline, by e-mail or from a USB stick. For the
period (a calendar month, UTC) it shows:

- the rollout percentages at the period's end (or now, for the running month),
  nationally and by region, against the end of the previous period;
- the national trend over the period, from ``"history"."rollout"``;
- the data's coverage: schools with a speed result each day, and registered
  schools with none in the period;
- the schools that dropped off or never reported;
- the safety devices down longest.

Every figure is the rollout's own (:func:`collector.rollout.survey`), so the
report and ``school-collector rollout --at <its moment>`` agree to the school.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from collector.influx.query import InfluxQL
from collector.rollout import DEFINITIONS, NATIONAL, Row, Survey, survey
from collector.rollout_rules import Rules

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# The metrics leadership reads first, in this order; the rest follow.
HEADLINE = ("meets_standard", "reporting", "live", "panic_button_live", "police_link_live")
TREND = ("meets_standard", "reporting", "live", "panic_button_live")
MAX_LISTED = 50  # schools and devices listed by name; the rest are counted
DOWN = 3  # device state_code of "down"


class ReportError(Exception):
    """The report cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Period:
    """A calendar month in UTC: ``2026-11``."""

    start: datetime
    end: datetime

    @classmethod
    def parse(cls, text: str) -> Period:
        if not re.fullmatch(r"\d{4}-\d{2}", text):
            raise ReportError(f"--period must be a month like 2026-11, not {text!r}")
        year, month = (int(part) for part in text.split("-"))
        if not 1 <= month <= 12:
            raise ReportError(f"--period {text}: there is no month {month}")
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return cls(start, end)

    @property
    def name(self) -> str:
        return f"{self.start:%Y-%m}"

    def moment(self, now: datetime) -> datetime:
        """The period's end, or now while it runs."""
        return min(self.end, now)


@dataclass
class DownDevice:
    school_id: str
    region: str
    device_id: str
    kind: str
    since: datetime


@dataclass
class Report:
    period: Period
    moment: datetime
    now: Survey
    before: Survey | None
    trend: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    reporting_by_day: list[tuple[datetime, int]] = field(default_factory=list)
    reported_in_period: set[str] = field(default_factory=set)
    down: list[DownDevice] = field(default_factory=list)


def gather(
    ql: InfluxQL,
    period: Period,
    rules: Rules,
    *,
    now: datetime | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Read everything the report shows, at the period's moment."""
    moment = period.moment(now or datetime.now(UTC))
    if moment <= period.start:
        raise ReportError(f"the period {period.name} has not begun yet")
    progress(f"the rollout at {moment:%Y-%m-%d %H:%M} UTC")
    current = survey(ql, moment, rules)
    if current is None:
        raise ReportError(
            f"no school registry was imported by {moment:%Y-%m-%d %H:%M} UTC: the "
            "percentages need it. Run: school-collector registry import FILE.csv"
        )
    progress(f"the rollout at the previous period's end ({period.start:%Y-%m-%d})")
    report = Report(period, moment, current, survey(ql, period.start, rules))
    progress("the national trend from history.rollout")
    report.trend = _trend(ql, period.start, moment)
    progress("coverage: schools with a speed result each day")
    report.reporting_by_day, report.reported_in_period = _coverage(ql, period.start, moment)
    progress("safety devices down")
    report.down = _down(ql, current, moment, rules)
    return report


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _trend(ql: InfluxQL, start: datetime, end: datetime) -> dict[str, list[tuple[datetime, float]]]:
    found: dict[str, list[tuple[datetime, float]]] = {}
    for series in ql.query(
        'SELECT last("percent") FROM "history"."rollout" WHERE "level" = \'national\' '  # noqa: S608
        f"AND time >= {_ns(start)} AND time <= {_ns(end)} "
        'GROUP BY time(1d), "metric"',
        epoch="ns",
    ):
        metric = series.tags.get("metric", "")
        if metric not in TREND:
            continue
        found[metric] = [
            (datetime.fromtimestamp(at / 1e9, UTC), float(value))
            for at, value in series.values
            if value is not None
        ]
    return found


def _coverage(
    ql: InfluxQL, start: datetime, end: datetime
) -> tuple[list[tuple[datetime, int]], set[str]]:
    per_day: dict[int, int] = defaultdict(int)
    schools: set[str] = set()
    for series in ql.query(
        'SELECT count("result_code") FROM "speed" '  # noqa: S608
        f"WHERE time >= {_ns(start)} AND time < {_ns(end)} "
        'GROUP BY time(1d), "school_id"',
        epoch="ns",
    ):
        for at, count in series.values:
            if count:
                per_day[at] += 1
                schools.add(series.tags["school_id"])
    days = []
    day = start
    while day < end:
        days.append((day, per_day.get(_ns(day), 0)))
        day += timedelta(days=1)
    return days, schools


def _down(ql: InfluxQL, current: Survey, moment: datetime, rules: Rules) -> list[DownDevice]:
    """Devices whose latest state (in the speed window) is down, longest first."""
    since = moment - timedelta(days=rules.speed_window_days)
    found = []
    for series in ql.query(
        'SELECT last("state_code"), last("changed_at_ms") FROM "device" '  # noqa: S608
        f"WHERE time > {_ns(since)} AND time <= {_ns(moment)} "
        'GROUP BY "school_id", "device_id", "kind"'
    ):
        _, state, changed = series.values[0]
        school = series.tags["school_id"]
        if state == DOWN and changed is not None and school in current.registry:
            found.append(
                DownDevice(
                    school,
                    current.registry.place_of(school).region or "",
                    series.tags["device_id"],
                    series.tags["kind"],
                    datetime.fromtimestamp(changed / 1000, UTC),
                )
            )
    return sorted(found, key=lambda d: d.since)


# ------------------------------------------------------------------ charts --


def _svg(draw: Callable[[Axes], None], height: float = 2.6) -> str:
    """A matplotlib figure as inline SVG (text kept as text, no external fonts)."""
    import matplotlib as mpl  # noqa: PLC0415 - only the report needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    with mpl.rc_context({"svg.fonttype": "none", "font.size": 9}):
        figure, axes = plt.subplots(figsize=(7.5, height))
        draw(axes)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _days(moments: list[datetime]) -> list[float]:
    """Matplotlib's date numbers, with the axis labelled as dates."""
    from matplotlib import dates  # noqa: PLC0415

    return [float(dates.date2num(moment)) for moment in moments]  # type: ignore[no-untyped-call]


def _date_axis(axes: Axes) -> None:
    from matplotlib import dates  # noqa: PLC0415

    axes.xaxis.set_major_formatter(dates.DateFormatter("%d %b"))  # type: ignore[no-untyped-call]
    axes.tick_params(axis="x", labelrotation=30)


def _trend_chart(report: Report) -> str:
    if not report.trend:
        return (
            "<p class='note'>No history yet: the collector writes it every rollout.interval_s.</p>"
        )

    def draw(axes: Axes) -> None:
        for metric in TREND:
            points = report.trend.get(metric, [])
            if points:
                axes.plot(_days([p[0] for p in points]), [p[1] for p in points], label=metric)
        axes.set_ylim(0, 100)
        axes.set_ylabel("% of registered schools")
        axes.legend(loc="lower left", fontsize=8)
        axes.grid(alpha=0.3)
        _date_axis(axes)

    return _svg(draw)


def _coverage_chart(report: Report) -> str:
    total = len(report.now.registry)

    def draw(axes: Axes) -> None:
        days = [day for day, _ in report.reporting_by_day]
        counts = [count for _, count in report.reporting_by_day]
        axes.bar(_days(days), counts, width=0.8, color="#4a7ab7")
        axes.axhline(total, color="#999", linestyle="--", linewidth=1)
        axes.set_ylabel("schools with a result")
        axes.set_ylim(0, max(total, max(counts, default=0)) * 1.05 or 1)
        _date_axis(axes)

    return _svg(draw, height=2.2)


# -------------------------------------------------------------------- html --


def _figure(row: Row) -> str:
    """The percentage for machines: empty when there is none (a mean without schools)."""
    return "" if math.isnan(row.percent) else f"{row.percent:.2f}"


def _percent(row: Row | None) -> str:
    return "&ndash;" if row is None or math.isnan(row.percent) else f"{row.percent:.1f} %"


def _change(now: Row, before: Row | None) -> str:
    if before is None or math.isnan(before.percent) or math.isnan(now.percent):
        return "&ndash;"
    change = now.percent - before.percent
    return f"{change:+.1f} pp"


def _rows_by_key(found: Survey | None) -> dict[tuple[str, str], Row]:
    return {} if found is None else {(r.metric, r.region): r for r in found.rows()}


def _national_table(report: Report) -> str:
    now, before = _rows_by_key(report.now), _rows_by_key(report.before)
    metrics = [*HEADLINE, *(m for m in DEFINITIONS if m not in HEADLINE)]
    lines = [
        (
            "<table class='figures'><tr><th>target</th><th>schools</th><th>of</th>"
            f"<th>{report.moment:%d %b %Y}</th><th>{report.period.start:%d %b %Y}</th>"
            "<th>change</th><th>what it counts</th></tr>"
        )
    ]
    for metric in metrics:
        row = now[metric, NATIONAL]
        lines.append(
            f"<tr data-metric='{metric}' data-region='{NATIONAL}' data-schools='{row.schools}' "
            f"data-total='{row.total}' data-percent='{_figure(row)}'>"
            f"<td>{metric}</td><td class='n'>{row.schools:,}</td><td class='n'>{row.total:,}</td>"
            f"<td class='n'><b>{_percent(row)}</b></td>"
            f"<td class='n'>{_percent(before.get((metric, NATIONAL)))}</td>"
            f"<td class='n'>{_change(row, before.get((metric, NATIONAL)))}</td>"
            f"<td class='def'>{html.escape(DEFINITIONS[metric])}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _regions_table(report: Report) -> str:
    now, before = _rows_by_key(report.now), _rows_by_key(report.before)
    regions = report.now.registry.regions()
    head = "".join(f"<th>{m}</th><th>change</th>" for m in HEADLINE)
    lines = [f"<table class='figures'><tr><th>region</th><th>schools</th>{head}</tr>"]
    for region in regions:
        cells = []
        for metric in HEADLINE:
            row = now[metric, region]
            cells.append(
                f"<td class='n' data-metric='{metric}' data-region='{html.escape(region)}' "
                f"data-schools='{row.schools}' data-total='{row.total}' "
                f"data-percent='{_figure(row)}'>{_percent(row)}</td>"
                f"<td class='n'>{_change(row, before.get((metric, region)))}</td>"
            )
        total = now["reporting", region].total
        lines.append(
            f"<tr><td>{html.escape(region)}</td><td class='n'>{total:,}</td>{''.join(cells)}</tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _chase_table(report: Report) -> str:
    found = report.now
    chased = [
        (metric, school)
        for metric in ("dropped_off", "never_reported")
        for school in found.registry
        if metric in found.metrics[school.school_id]
    ]
    if not chased:
        return "<p>Every registered school has reported within 28 days.</p>"
    lines = [
        f"<p>{len(chased):,} schools: "
        + ", ".join(
            f"{sum(1 for m, _ in chased if m == metric):,} {metric.replace('_', ' ')}"
            for metric in ("dropped_off", "never_reported")
        )
        + (f"; the first {MAX_LISTED} listed." if len(chased) > MAX_LISTED else ".")
        + "</p>",
        (
            "<table><tr><th>school</th><th>name</th><th>region</th><th>status</th>"
            "<th>last speed result</th></tr>"
        ),
    ]
    for metric, school in chased[:MAX_LISTED]:
        last = found.facts.last_report.get(school.school_id)
        lines.append(
            f"<tr><td>{html.escape(school.school_id)}</td><td>{html.escape(school.name)}</td>"
            f"<td>{html.escape(school.region)}</td><td>{metric.replace('_', ' ')}</td>"
            f"<td>{last:%Y-%m-%d}</td></tr>"
            if last is not None
            else f"<tr><td>{html.escape(school.school_id)}</td><td>{html.escape(school.name)}"
            f"</td><td>{html.escape(school.region)}</td><td>{metric.replace('_', ' ')}</td>"
            "<td>never</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _down_table(report: Report) -> str:
    if not report.down:
        return "<p>No safety device is down.</p>"
    lines = [
        f"<p>{len(report.down):,} devices down"
        + (f"; the {MAX_LISTED} down longest listed." if len(report.down) > MAX_LISTED else ".")
        + "</p>",
        (
            "<table><tr><th>school</th><th>region</th><th>device</th><th>kind</th>"
            "<th>down since</th><th>days</th></tr>"
        ),
    ]
    for device in report.down[:MAX_LISTED]:
        days = (report.moment - device.since).total_seconds() / 86_400
        lines.append(
            f"<tr><td>{html.escape(device.school_id)}</td><td>{html.escape(device.region)}</td>"
            f"<td>{html.escape(device.device_id)}</td><td>{device.kind.replace('_', ' ')}</td>"
            f"<td>{device.since:%Y-%m-%d %H:%M}</td><td class='n'>{days:.1f}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


STYLE = """
body { font-family: sans-serif; max-width: 62rem; margin: 2rem auto; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } td.def { color: #666; }
.note { color: #666; } svg { max-width: 100%; height: auto; }
"""


def render(report: Report) -> str:
    registered = len(report.now.registry)
    silent = registered - len(report.reported_in_period & set(report.now.metrics))
    moment = report.moment.isoformat()
    body = f"""
<h1>School connectivity and safety: {report.period.name}</h1>
<p class="sub">Figures at {report.moment:%Y-%m-%d %H:%M} UTC for {registered:,} registered schools,
against {report.period.start:%Y-%m-%d} (the previous period's end). Made by school-monitor
(school-collector report) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>
<h2>National rollout</h2>
{_national_table(report)}
<h2>Trend over the period (national)</h2>
{_trend_chart(report)}
<h2>By region</h2>
{_regions_table(report)}
<h2>Coverage of the data</h2>
<p>{len(report.reported_in_period & set(report.now.metrics)):,} of {registered:,} registered
schools sent at least one speed result in the period; {silent:,} sent none.</p>
{_coverage_chart(report)}
<h2>Schools that dropped off or never reported</h2>
{_chase_table(report)}
<h2>Safety devices down longest</h2>
{_down_table(report)}
"""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>School monitor report {report.period.name}</title>"
        f"<style>{STYLE}</style></head>\n"
        f"<body data-moment='{moment}' data-period='{report.period.name}'>{body}</body></html>\n"
    )
