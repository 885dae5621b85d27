"""``school-collector report``: a month in one offline HTML file, checked as a person sees it.

A simulated fleet's 30 days in a real InfluxDB, the rollout history as the
collector writes it, the report made by the real command, then rendered by
headless Chromium (Debian's ``chromium``): its figures must be the ones
``school-collector rollout --at <the report's moment>`` gives.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent.contract import (
    DEVICE_RESULT_CODES,
    DeviceKind,
    DeviceObservation,
    DeviceResult,
    DevicesReport,
    DeviceState,
    new_message_id,
)
from collector.fleet import Fleet, generate, ground_truth, write_direct
from collector.influx import make_history_writer, make_writer
from collector.influx.query import InfluxQL
from collector.points import PointMaker, ns
from collector.report import Period
from collector.rollout import NATIONAL, rollout, rollout_lines
from collector.rollout_rules import Rules
from collector.service import prepare_database
from collector.settings import CollectorSettings, InfluxSettings
from tests.support.services import REPO, Influx, command_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Figures(HTMLParser):
    """Every element carrying a rollout figure: (metric, region) -> (schools, total, percent)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[tuple[str, str], tuple[int, int, float | None]] = {}
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {name: value or "" for name, value in attrs}
        if tag == "body":
            self.body = data
        if "data-metric" in data:
            key = (data["data-metric"], data["data-region"])
            self.found[key] = (
                int(data["data-schools"]),
                int(data["data-total"]),
                float(data["data-percent"]) if data["data-percent"] else None,
            )


class Sections(HTMLParser):
    """The page as a reader sees it: under each heading (h2), its text and its tables' rows
    (each row a list of its cells' text)."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.heading: str | None = None
        self._in_heading = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_heading, self.heading = True, ""
        elif self.heading is not None and not self._in_heading:
            if tag == "tr":
                self.rows[self.heading].append([])
            elif tag in ("td", "th"):
                self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self.heading is not None:
            self._in_heading = False
            self.heading = " ".join(self.heading.split())
            self.text[self.heading], self.rows[self.heading] = "", []
        elif tag in ("td", "th") and self._cell is not None and self.heading is not None:
            self.rows[self.heading][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.heading = (self.heading or "") + data
        elif self.heading is not None:
            self.text[self.heading] = " ".join((self.text[self.heading] + " " + data).split())
            if self._cell is not None:
                self._cell.append(data)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is installed by deploy/setup.sh --dev"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


# The panic button the fixture leaves down: since this long before the period's end.
DOWN_FOR = timedelta(days=4, hours=12)


@pytest.fixture
def fleet_database(database: Influx) -> tuple[Influx, Period, Fleet, DevicesReport]:
    """60 schools' last 30 days, their registry, and a daily rollout in history.

    Besides the fleet's own silent schools (those without an agent never report), one
    school's only result is 29 days before the period's end (dropped off by then), and
    one school's panic button is down, reported an hour before the period's end.
    """
    influx = InfluxSettings(url=database.url, database=database.database)
    settings = CollectorSettings(influx=influx)
    writer = make_writer(influx)
    assert prepare_database(settings, writer)
    now = datetime.now(UTC).replace(microsecond=0)
    last_month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    period = Period.parse(last_month)
    fleet = generate(60, now=now, seed=7, tests_per_day=2.0)
    dropped = next(record for record in fleet.records if not record.monitored)
    dropped.downloads = [(period.end - timedelta(days=29), 35.0)]
    write_direct(fleet, writer, influx, registry_at=period.start - timedelta(days=40))
    school = next(r.school for r in fleet.records if r.school.has(DeviceKind.PANIC_BUTTON))
    down = DevicesReport(
        school_id=school.school_id,
        agent_id=f"agent-{school.school_id.lower()}",
        measured_at=period.end - timedelta(hours=1),
        boot_id=new_message_id(),
        sequence=0,
        full=True,
        devices=[
            DeviceObservation(
                device_id="panic_button-1",
                kind=DeviceKind.PANIC_BUTTON,
                label="panic button 1",
                state=DeviceState.DOWN,
                changed_at=period.end - DOWN_FOR,
                result=DeviceResult.TIMEOUT.value,
                result_code=DEVICE_RESULT_CODES[DeviceResult.TIMEOUT],
            )
        ],
    )
    maker = PointMaker(place_of=fleet.registry.place_of)
    writer.write(maker.lines(down, ns(down.measured_at)))
    history = make_history_writer(influx)
    client = InfluxQL(influx)
    day = period.start
    while day < min(period.end, now):
        rows = rollout(client, day, settings.rollout.rules())
        assert rows is not None
        history.write(rollout_lines(rows, day))
        day += timedelta(days=3)
    client.close()
    return database, period, fleet, down


def test_the_report_shows_in_a_browser_the_figures_rollout_gives(
    fleet_database: tuple[Influx, Period, Fleet, DevicesReport], tmp_path: Path
) -> None:
    database, period, fleet, down = fleet_database
    env = command_env(
        SCHOOL_COLLECTOR_INFLUX__URL=database.url,
        SCHOOL_COLLECTOR_INFLUX__DATABASE=database.database,
    )
    out = tmp_path / "report.html"
    made = subprocess.run(
        [sys.executable, "-m", "collector", "report", "--period", period.name, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "reading the rollout at" in made.stderr  # progress while it works
    page = out.read_text()
    # Self-contained: nothing to fetch, so it opens offline.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!#|data:)""", page)
    assert "<script" not in page
    assert page.count("<svg") == 2  # the trend and the coverage, drawn inline

    dom = _chromium("--dump-dom", out.as_uri()).stdout
    figures = Figures()
    figures.feed(dom)
    moment = figures.body["data-moment"]
    assert datetime.fromisoformat(moment) == period.end  # a finished month: its end
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # tables and charts, not a blank page

    cli = subprocess.run(
        [sys.executable, "-m", "collector", "rollout", "--at", moment, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO, check=True,
    )  # fmt: skip
    expected = {(r["metric"], r["region"]): r for r in json.loads(cli.stdout)}
    assert len(figures.found) >= 14  # every national metric, and regions
    for key, (schools, total, percent) in figures.found.items():
        row = expected[key]
        assert (schools, total) == (row["schools"], row["total"]), key
        if row["percent"] is None:  # no figure (a mean without schools): none shown
            assert percent is None, key
        else:
            assert percent == pytest.approx(row["percent"], abs=0.01), key
    national = [key for key in figures.found if key[1] == "national"]
    assert len(national) == len({r["metric"] for r in expected.values()})

    # The rest of the page, as read, against what the fixture put in.
    sections = Sections()
    sections.feed(dom)
    _check_previous_period(sections, fleet, period)
    _check_chased_schools(sections, fleet, period)
    _check_devices_down(sections, fleet, period, down)
    _check_coverage(sections, fleet, period)


def _check_previous_period(sections: Sections, fleet: Fleet, period: Period) -> None:
    """The previous period's column and the change: the fleet's own truth at both ends."""
    head, *rows = sections.rows["National rollout"]
    assert head[3:6] == [f"{period.end:%d %b %Y}", f"{period.start:%d %b %Y}", "change"]
    by_metric = {row[0]: row for row in rows}
    now, before = ground_truth(fleet, period.end), ground_truth(fleet, period.start)
    changed = 0
    for metric in ("reporting", "never_reported", "dropped_off", "security_contract"):
        row, was, is_ = by_metric[metric], before[metric, NATIONAL], now[metric, NATIONAL]
        assert row[3:6] == [f"{is_:.1f} %", f"{was:.1f} %", f"{is_ - was:+.1f} pp"], metric
        changed += was != is_
    assert changed  # the column is the previous period's, not the current one again


def _check_chased_schools(sections: Sections, fleet: Fleet, period: Period) -> None:
    """Every school silent for more than 28 days by the period's end, or never heard from."""
    rules, expected = Rules(), []
    for record in fleet.records:
        school = record.school
        reports = [at for at, _ in record.downloads if at <= period.end]
        if not reports:
            expected.append([school.school_id, school.name, school.region, "never reported",
                             "never"])  # fmt: skip
        elif period.end - max(reports) > timedelta(days=rules.dropped_days):
            expected.append([school.school_id, school.name, school.region, "dropped off",
                             f"{max(reports):%Y-%m-%d}"])  # fmt: skip
    dropped = sum(1 for row in expected if row[3] == "dropped off")
    assert dropped >= 1  # the fixture's silent schools
    assert len(expected) - dropped >= 1
    section = "Schools that dropped off or never reported"
    head, *rows = sections.rows[section]
    assert head == ["school", "name", "region", "status", "last speed result"]
    assert sorted(rows) == sorted(expected)
    summary = f"{len(expected)} schools: {dropped} dropped off, {len(expected) - dropped} never"
    assert summary in sections.text[section]


def _check_devices_down(
    sections: Sections, fleet: Fleet, period: Period, down: DevicesReport
) -> None:
    """The one device the fixture left down before the period's end (the fleet's own
    device lists come after it)."""
    (device,) = down.devices
    region = fleet.registry.place_of(down.school_id).region
    head, *rows = sections.rows["Safety devices down longest"]
    assert head == ["school", "region", "device", "kind", "down since", "days"]
    days = DOWN_FOR.total_seconds() / 86_400
    assert rows == [[down.school_id, region, device.device_id, "panic button",
                     f"{period.end - DOWN_FOR:%Y-%m-%d %H:%M}", f"{days:.1f}"]]  # fmt: skip


def _check_coverage(sections: Sections, fleet: Fleet, period: Period) -> None:
    """Schools with any speed result (a failed test too) in the period, and those with none."""
    reported = {
        record.school.school_id
        for record in fleet.records
        if any(period.start <= at < period.end for at, _ in record.downloads)
    }
    registered = len(fleet.records)
    assert 0 < len(reported) < registered
    assert (
        f"{len(reported)} of {registered} registered schools sent at least one speed result "
        f"in the period; {registered - len(reported)} sent none."
    ) in sections.text["Coverage of the data"]


def test_a_period_that_is_not_a_month_is_refused_with_the_right_form() -> None:
    with pytest.raises(Exception, match="like 2026-11"):
        Period.parse("November")
    assert Period.parse("2026-12").end == datetime(2027, 1, 1, tzinfo=UTC)
