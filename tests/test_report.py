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

from collector.fleet import generate, write_direct
from collector.influx import make_history_writer, make_writer
from collector.influx.query import InfluxQL
from collector.report import Period
from collector.rollout import rollout, rollout_lines
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


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is installed by deploy/setup.sh --dev"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


@pytest.fixture
def fleet_database(database: Influx) -> tuple[Influx, Period]:
    """60 schools' last 30 days, their registry, and a daily rollout in history."""
    influx = InfluxSettings(url=database.url, database=database.database)
    settings = CollectorSettings(influx=influx)
    writer = make_writer(influx)
    assert prepare_database(settings, writer)
    now = datetime.now(UTC).replace(microsecond=0)
    last_month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    period = Period.parse(last_month)
    fleet = generate(60, now=now, seed=7, tests_per_day=2.0)
    write_direct(fleet, writer, influx, registry_at=period.start - timedelta(days=40))
    history = make_history_writer(influx)
    client = InfluxQL(influx)
    day = period.start
    while day < min(period.end, now):
        rows = rollout(client, day, settings.rollout.rules())
        assert rows is not None
        history.write(rollout_lines(rows, day))
        day += timedelta(days=3)
    client.close()
    return database, period


def test_the_report_shows_in_a_browser_the_figures_rollout_gives(
    fleet_database: tuple[Influx, Period], tmp_path: Path
) -> None:
    database, period = fleet_database
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


def test_a_period_that_is_not_a_month_is_refused_with_the_right_form() -> None:
    with pytest.raises(Exception, match="like 2026-11"):
        Period.parse("November")
    assert Period.parse("2026-12").end == datetime(2027, 1, 1, tzinfo=UTC)
