"""Availability query benchmark: what the school-hours checks cost the rollout at national scale.

    .venv/bin/python -m tests.bench.availability_query                   # 7,400 schools, 30 days
    .venv/bin/python -m tests.bench.availability_query --schools 500 --days 3

``school_hours_available`` and ``availability_mean`` sum each school's checks
in school hours over ``rollout.availability_window_days`` (30) from the raw
``connectivity`` points, one an hour per agent. The state keeper needs that sum
at every rollout (``rollout.interval_s``, 5 minutes), ``school-collector
rollout`` once. Three ways, side by side:

- *one query*: the whole window in one InfluxQL sum (what the rollout did
  first; the client's timeout raised to 300 s so that it can be timed);
- *by day, first*: collector/school_checks.py, a fresh ``SchoolChecks``: the
  window read a UTC day at a time (what ``school-collector rollout`` and the
  keeper's first rollout do);
- *by day, kept*: the same object again: only the first partial day and what
  is not yet settled are read (each later rollout).

For each fleet size, an InfluxDB 1.x of its own (deploy/localstack.py) gets
the simulated fleet with ``--days`` of hourly reachability reports (the
collector's own ``simulate --via influx``), is left to compact (a shard idle
for 10 s, as the storage benchmark does), restarted, and then the sum runs
``--repeat`` times while InfluxDB's resident memory is sampled every 50 ms.
The table gives the connectivity points, and for each way the median time
and InfluxDB's peak RSS while it ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from localstack import free_port  # noqa: E402

from collector.influx.query import InfluxQL  # noqa: E402
from collector.rollout_rules import Rules  # noqa: E402
from collector.school_checks import SchoolChecks  # noqa: E402
from collector.settings import InfluxSettings, RolloutSettings  # noqa: E402
from tests.bench.storage import QuicklyCompacted  # noqa: E402

DATABASE = "school_monitor"
ONE_QUERY = (
    'SELECT sum("school_passed"), sum("school_checks") FROM "connectivity" '
    'WHERE time > {since} AND time <= {until} GROUP BY "school_id"'
)
WAYS = ("one query", "by day, first", "by day, kept")


def one_query(ql: InfluxQL, at: datetime, rules: Rules) -> int:
    until = int(at.timestamp() * 1e9)
    since = until - int(rules.availability_window_days * 86_400e9)
    return len(ql.query(ONE_QUERY.format(since=since, until=until)))


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """Sample ``pid``'s resident memory every 50 ms; the list's one item is the peak."""
    peak = [0]
    stop = threading.Event()
    process = psutil.Process(pid)

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def one_fleet(schools: int, days: int, repeat: int) -> tuple[int, dict[str, tuple[float, int]]]:
    """(connectivity points, each way's median seconds and InfluxDB's peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="availability-") as tmp:
        influx = QuicklyCompacted(Path(tmp), free_port(), free_port())
        influx.start()
        try:
            env = os.environ | {
                "SCHOOL_COLLECTOR_INFLUX__URL": influx.url,
                "SCHOOL_COLLECTOR_INFLUX__DATABASE": DATABASE,
            }
            began = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "collector", "simulate", "--via", "influx",
                 "--schools", str(schools), "--connectivity-days", str(days)],
                env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            written_s = time.monotonic() - began
            at = datetime.now(UTC)
            settings = InfluxSettings(url=influx.url, database=DATABASE, timeout_s=300)
            ql = InfluxQL(settings)
            counted = ql.query('SELECT count("checks") FROM "connectivity"')
            points = int(counted[0].values[0][1]) if counted else 0
            print(f"  {schools} schools, {days} days: {points:,} connectivity points "
                  f"written in {written_s:.0f} s; compacting", flush=True)  # fmt: skip
            time.sleep(25)
            influx.stop()
            influx.start()
            ql = InfluxQL(settings)
            rules = RolloutSettings().rules()
            ql.query('SELECT count("checks") FROM "connectivity"')  # loads the index: not counted
            pid = influx.process.pid()
            assert pid is not None
            found: dict[str, tuple[float, int]] = {}
            kept = SchoolChecks(ql)
            kept.window(at, rules.availability_window_days)
            runs = {
                "one query": lambda: one_query(ql, at, rules),
                "by day, first": lambda: len(
                    SchoolChecks(ql).window(at, rules.availability_window_days)),
                "by day, kept": lambda: len(kept.window(at, rules.availability_window_days)),
            }  # fmt: skip
            for way in WAYS:
                times: list[float] = []
                with peak_rss(pid) as peak:
                    for _ in range(repeat):
                        began = time.monotonic()
                        runs[way]()
                        times.append(time.monotonic() - began)
                found[way] = (statistics.median(times), peak[0])
                print(f"  {way}: {statistics.median(times):.2f} s", flush=True)
            return points, found
        finally:
            influx.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.availability_query",
        description="What summing each school's checks in school hours costs InfluxDB.",
    )
    parser.add_argument("--schools", default="7400",
                        help="fleet sizes, comma-separated (default: 7400)")  # fmt: skip
    parser.add_argument("--days", type=int, default=30,
                        help="days of hourly reachability reports (default: 30)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="sums per fleet (default: 5)")
    args = parser.parse_args()
    rows = []
    for schools in (int(n) for n in args.schools.split(",")):
        points, found = one_fleet(schools, args.days, args.repeat)
        rows.append((schools, points, found))
    print()
    print("| schools | days | connectivity points | "
          + " | ".join(f"{way}: time, InfluxDB peak RSS" for way in WAYS) + " |")  # fmt: skip
    print("|---|---|---|" + "---|" * len(WAYS))
    for schools, points, found in rows:
        cells = " | ".join(f"{found[w][0]:.2f} s, {found[w][1] / 2**20:,.0f} MB" for w in WAYS)
        print(f"| {schools:,} | {args.days} | {points / 1e6:.2f} M | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
